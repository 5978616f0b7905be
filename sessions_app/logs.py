"""Logging: one line per request, JSON or text, each line with its request id.

Under Gunicorn, ``gunicorn.conf.py`` installs ``dict_config()`` for the master
and the workers; elsewhere (``flask run``, the CLI) ``init_app`` installs it
when nothing else configured logging first.  No line carries a body or a
header, so tokens and message contents never reach the log.
"""

import logging
import logging.config
import time
from datetime import UTC, datetime

import orjson
from flask import g, request

from . import ids, requestid

logger = logging.getLogger("sessions_app.requests")


def _timestamp(record):
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """Write a record as one JSON object on one line."""

    def format(self, record):
        line = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "request_id", None):
            line["request_id"] = record.request_id
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """Write a record as one readable line: time, level, logger, request id, fields (not None)."""

    def format(self, record):
        parts = [_timestamp(record), record.levelname, record.name]
        if getattr(record, "request_id", None):
            parts.append(f"[{record.request_id}]")
        parts.append(record.getMessage())
        fields = getattr(record, "fields", {}).items()
        parts.extend(f"{key}={value}" for key, value in fields if value is not None)
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


FORMATTERS = {"json": JsonFormatter, "text": TextFormatter}


class NoDevServerRequestLines(logging.Filter):
    """Drop the Werkzeug dev server's line per request (``flask run``): the app writes its own.

    Werkzeug's line would be a second one, with colour codes in it.
    """

    def filter(self, record):
        return not (isinstance(record.msg, str) and record.msg.endswith('"%s" %s %s'))


def dict_config(level, fmt):
    """Return the ``logging.config.dictConfig`` mapping: every line to stdout."""
    formatter = FORMATTERS[fmt]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"app": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "filters": {"no_dev_server_request_lines": {"()": NoDevServerRequestLines}},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "app",
                "stream": "ext://sys.stdout",
            },
        },
        "root": {"level": level, "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["stdout"], "propagate": False},
            # The app writes the request line; Gunicorn's would be a second one.
            "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
            # peewee logs every statement with its parameters at DEBUG: that
            # would put request bodies in the log.
            "peewee": {"level": "INFO"},
            "werkzeug": {"filters": ["no_dev_server_request_lines"]},
        },
    }


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
            }
        },
    )
    return response


def init_app(app):
    """Time every request and log one line for it when it is answered."""
    _stamp_request_ids()
    if not logging.getLogger().handlers:
        logging.config.dictConfig(dict_config(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"]))
    app.before_request(_start)
    app.after_request(_log_request)
