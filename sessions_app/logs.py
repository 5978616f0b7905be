"""Logging: every line JSON or text, on stdout, with its request id.

Under Gunicorn, ``gunicorn.conf.py`` installs ``dict_config()`` for the master
and the workers; elsewhere (``flask run``, the CLI) ``init_app`` installs it
when nothing else configured logging first.  This module imports neither
Flask nor the app, so the Gunicorn master can use it (``requestlog`` writes
the line of each request).
"""

import logging
import logging.config
from datetime import UTC, datetime

import orjson


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
    """Write a record as one readable line: time, level, logger, request id, fields."""

    def format(self, record):
        parts = [_timestamp(record), record.levelname, record.name]
        if getattr(record, "request_id", None):
            parts.append(f"[{record.request_id}]")
        parts.append(record.getMessage())
        parts.extend(f"{key}={value}" for key, value in getattr(record, "fields", {}).items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


FORMATTERS = {"json": JsonFormatter, "text": TextFormatter}


def dict_config(level, fmt):
    """Return the ``logging.config.dictConfig`` mapping: every line to stdout."""
    formatter = FORMATTERS[fmt]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"app": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
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
        },
    }


def init_app(app):
    """Log as ``app``'s settings say, unless something configured logging first."""
    if not logging.getLogger().handlers:
        logging.config.dictConfig(dict_config(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"]))
