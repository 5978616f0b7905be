"""One log line per request, with its facts; every line of a request carries its id.

No line carries a body or a header, so tokens and message contents never
reach the log: a request's token appears by its name only (``token``).
"""

import logging
import time

from flask import g, request

from . import ids, requestid

logger = logging.getLogger("sessions_app.requests")


def _stamp_request_ids():
    # Stamp the id when a record is made, not when it is written: a handler
    # may format it later, outside the request (pytest's caplog does).
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "stamps_request_id", False):
        return

    def make_stamped_record(*args, **kwargs):
        record = make_record(*args, **kwargs)
        record.request_id = requestid.current()
        return record

    make_stamped_record.stamps_request_id = True
    logging.setLogRecordFactory(make_stamped_record)


def elapsed():
    """Return the seconds since the current request began."""
    return time.perf_counter() - g.started


def _start():
    g.started = time.perf_counter()


def _session_id(response):
    if request.view_args and "session_id" in request.view_args:
        return request.view_args["session_id"]
    created = (response.headers.get("Location") or "").rpartition("/")[2]
    return created if ids.is_session_id(created) else None


def _log_request(response):
    route = request.url_rule.rule if request.url_rule else None
    logger.info(
        "%s %s %s",
        request.method,
        route or "(no route)",
        response.status_code,
        extra={
            "fields": {
                "method": request.method,
                "route": route,
                "session_id": _session_id(response),
                "status": response.status_code,
                "duration_ms": round(elapsed() * 1000, 3),
                "client": request.remote_addr,
                "scheme": request.scheme,
                # Set by auth for a token it knows; None without one.
                "token": g.get("token_name"),
            }
        },
    )
    return response


def init_app(app):
    """Time every request and log one line for it when it is answered."""
    _stamp_request_ids()
    app.before_request(_start)
    app.after_request(_log_request)
