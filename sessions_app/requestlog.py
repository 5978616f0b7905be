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


def _session_id(req, response):
    view_args = req.view_args
    if view_args and "session_id" in view_args:
        return view_args["session_id"]
    created = (response.headers.get("Location") or "").rpartition("/")[2]
    return created if ids.is_session_id(created) else None


def _log_request(response):
    # Every request passes here: the facts are read from the request once
    # (not through its proxy each time), and the record is made and handed
    # to the handlers directly, without logging's search of the stack for
    # a caller that no line prints.
    if not logger.isEnabledFor(logging.INFO):
        return response
    req = request._get_current_object()
    context = g._get_current_object()
    rule = req.url_rule
    route = rule.rule if rule is not None else None
    method, status = req.method, response.status_code
    fields = {
        "method": method,
        "route": route,
        "session_id": _session_id(req, response),
        "status": status,
        "duration_ms": round(elapsed() * 1000, 3),
        "client": req.remote_addr,
        "scheme": req.scheme,
        # Set by auth for a token it knows; None without one.
        "token": getattr(context, "token_name", None),
    }
    args = (method, route or "(no route)", status)
    record = logger.makeRecord(
        logger.name, logging.INFO, __file__, 0, "%s %s %s", args, None, extra={"fields": fields}
    )
    logger.handle(record)
    return response


def init_app(app):
    """Time every request and log one line for it when it is answered."""
    _stamp_request_ids()
    app.before_request(_start)
    app.after_request(_log_request)
