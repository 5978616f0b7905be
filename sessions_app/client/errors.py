"""The client's exceptions: one family, an answer's problem document on each."""

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


class SessionsError(Exception):
    """Anything the client could not do: the base of every exception it raises."""


class ConnectionFailed(SessionsError):
    """The service could not be reached, or gave no answer, after every attempt."""


class ApiError(SessionsError):
    """The service answered with an error: its problem document, parsed.

    ``status``, ``title``, ``detail``, ``errors`` (field name to messages, on
    a 422), ``request_id`` (the problem's ``instance``, or the response's
    ``X-Request-ID``), ``retry_after`` (seconds, when the answer said) and
    ``problem`` (the whole document, ``{}`` when the body was not one).
    """

    status = None
    #: True for a 409 that says an earlier try of the same request is still being handled.
    in_flight = False

    def __init__(self, status, problem, request_id=None, retry_after=None):
        self.status = status
        self.problem = problem
        self.title = problem.get("title") or ""
        self.detail = problem.get("detail") or self.title or f"HTTP {status}"
        self.errors = problem.get("errors") or {}
        self.request_id = problem.get("instance") or request_id
        self.retry_after = retry_after
        super().__init__(self.detail)

    def __str__(self):
        text = f"{self.status} {self.title}: {self.detail}" if self.title else self.detail
        for field, messages in self.errors.items():
            text += f"\n  {field}: {_describe(messages)}"
        return text


class NotFoundError(ApiError):
    """404: no such session (or path)."""


class ConflictError(ApiError):
    """409: the request conflicts with the session's state, or the same key is in flight."""


class GoneError(ApiError):
    """410: the change feed no longer holds the changes after this cursor.

    List the sessions again, then watch from ``cursor="latest"``.
    """


class PreconditionFailedError(ApiError):
    """412: ``If-Match`` named a version the session no longer has."""


class UnprocessableError(ApiError):
    """422: invalid fields or query parameters; ``errors`` names each."""


class ServiceUnavailableError(ApiError):
    """503: the service (its database) is unavailable; ``retry_after`` says when to retry."""


BY_STATUS = {
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    412: PreconditionFailedError,
    422: UnprocessableError,
    503: ServiceUnavailableError,
}


def from_response(response):
    """Return the ``ApiError`` (or subclass) for an error ``response``."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        text = response.text.strip()
        problem = {"title": response.reason_phrase, "detail": text[:200] or response.reason_phrase}
    error_class = BY_STATUS.get(response.status_code, ApiError)
    return error_class(
        response.status_code,
        problem,
        request_id=response.headers.get("X-Request-ID"),
        retry_after=retry_after_seconds(response.headers.get("Retry-After")),
    )


def retry_after_seconds(value, now=None):
    """Return a ``Retry-After`` header (seconds or an HTTP date) as seconds, or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (moment - now).total_seconds())


def _describe(messages):
    if isinstance(messages, list):
        return " ".join(str(message) for message in messages)
    return str(messages)
