"""Every error as an RFC 9457 problem document (application/problem+json).

HTTP errors keep the response Werkzeug built for them (so a 405 keeps its
``Allow`` header) and get a problem body instead of HTML.  What went wrong
inside the service goes to the log, never into a body.

Storage raises its own errors (``storage_errors.py``, no HTTP there); each
is answered here with the problem of its HTTP status.  Storage imports the
errors of this module too (``conditional``), so it imports no Flask (its
handlers import it when they run).
"""

import logging

from marshmallow import ValidationError
from peewee import InterfaceError, OperationalError
from playhouse.pool import MaxConnectionsExceeded
from werkzeug.exceptions import (
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    HTTPException,
    InternalServerError,
    NotFound,
    PreconditionFailed,
    ServiceUnavailable,
    UnprocessableEntity,
)
from werkzeug.http import HTTP_STATUS_CODES

from . import jsonio, metrics
from .storage_errors import (
    AgentOutOfScope,
    CursorGone,
    KeyInFlight,
    SessionNotFound,
    StatusConflict,
    StorageError,
    VersionMismatch,
    WaitingFull,
)

logger = logging.getLogger(__name__)

PROBLEM_MIMETYPE = "application/problem+json"


class InvalidBody(BadRequest):
    """The body is not JSON, or not a JSON object."""


class InvalidHeader(BadRequest):
    """A header of the request is malformed (an ``If-Match`` that lists no tag, say)."""


class NotModified(HTTPException):
    """Not an error: the client's copy is current (304, no body)."""

    code = 304

    def __init__(self, headers):
        super().__init__()
        self.headers = headers

    def get_response(self, environ=None, scope=None):
        from flask import current_app

        response = current_app.response_class(status=304, headers=self.headers)
        del response.headers["Content-Type"]
        return response


class KeyReused(UnprocessableEntity):
    description = "This Idempotency-Key was used for a different request."

    def __init__(self, header):
        super().__init__()
        self.errors = {header: ["Used for a different request (another body or session)."]}


class DatabaseUnavailable(ServiceUnavailable):
    description = "The database cannot be reached right now; retry the request later."


def problem_body(status, detail, **extra):
    """Return the problem document for ``status``, titled with its reason phrase."""
    body = {
        "type": "about:blank",
        "title": HTTP_STATUS_CODES[status],
        "status": status,
        "detail": detail,
        **extra,
    }
    # The request id names this occurrence: the same id is in the response's
    # X-Request-ID header and in every log line of the request.
    from . import requestid  # Flask: storage imports this module without it

    instance = requestid.current()
    if instance:
        body["instance"] = instance
    return body


def handle_http_exception(exc, **extra):
    """Turn a Werkzeug HTTP error into a problem document, keeping its headers."""
    response = exc.get_response()
    errors = getattr(exc, "errors", None)
    if errors is not None:
        extra.setdefault("errors", errors)
    response.set_data(jsonio.dumps(problem_body(exc.code, exc.description, **extra)))
    response.mimetype = PROBLEM_MIMETYPE
    return response


def handle_validation_error(exc):
    """Answer 422 naming every bad field."""
    return handle_http_exception(
        UnprocessableEntity("The request has invalid fields; see errors."),
        errors=_string_keys(exc.messages),
    )


#: Storage's errors, as the HTTP errors whose problems answer them.
_AS_HTTP = {
    SessionNotFound: NotFound,
    AgentOutOfScope: Forbidden,
    StatusConflict: Conflict,
    VersionMismatch: PreconditionFailed,
    KeyInFlight: Conflict,
    CursorGone: Gone,
    WaitingFull: ServiceUnavailable,
}


def handle_storage_error(exc):
    """Answer an error of storage's with its problem, its message the ``detail``."""
    extra = {"errors": exc.errors} if hasattr(exc, "errors") else {}
    return handle_http_exception(_AS_HTTP[type(exc)](str(exc)), **extra)


def handle_database_error(exc):
    """Answer 503 with Retry-After when the database cannot be reached or is busy."""
    from flask import current_app, request

    logger.warning("Database unavailable during %s %s: %s", request.method, request.path, exc)
    metrics.DATABASE_ERRORS.labels(type(exc).__name__).inc()
    response = handle_http_exception(DatabaseUnavailable())
    response.headers["Retry-After"] = str(current_app.config["RETRY_AFTER_SECONDS"])
    return response


def handle_waiting_full(exc):
    """Answer 503 with Retry-After when every waiting slot is taken."""
    from flask import current_app

    metrics.WAITING_REFUSED.labels(exc.kind).inc()
    response = handle_http_exception(ServiceUnavailable(str(exc)))
    response.headers["Retry-After"] = str(current_app.config["RETRY_AFTER_SECONDS"])
    return response


def handle_unexpected_error(exc):
    """Log an unexpected error and answer a bare 500."""
    original = getattr(exc, "original_exception", None) or exc
    logger.error("Unhandled error", exc_info=original)
    return handle_http_exception(InternalServerError())


def _string_keys(messages):
    # marshmallow keys list items by int index, and an unknown key is named
    # as sent: make every key a string that JSON can carry.
    if isinstance(messages, dict):
        return {
            str(key).encode("utf-8", "backslashreplace").decode("utf-8"): _string_keys(value)
            for key, value in messages.items()
        }
    return messages


def init_app(app):
    """Register the problem+json handlers on ``app``."""
    app.register_error_handler(ValidationError, handle_validation_error)
    for exc_class in (OperationalError, InterfaceError, MaxConnectionsExceeded):
        app.register_error_handler(exc_class, handle_database_error)
    app.register_error_handler(StorageError, handle_storage_error)
    app.register_error_handler(WaitingFull, handle_waiting_full)
    app.register_error_handler(InternalServerError, handle_unexpected_error)
    app.register_error_handler(NotModified, NotModified.get_response)
    app.register_error_handler(HTTPException, handle_http_exception)
