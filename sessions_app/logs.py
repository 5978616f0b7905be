"""Logging: every line JSON or text, on stdout, with its request id.

Under Gunicorn, ``gunicorn.conf.py`` installs ``dict_config()`` for the master
and the workers; elsewhere (``flask run``, the CLI) ``init_app`` installs it
when nothing else configured logging first.  This module imports neither
Flask nor the app, so the Gunicorn master can use it (``requestlog`` writes
the line of each request).
"""

import logging
import logging.config
import re
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


#: Characters that would end a text line or act on a terminal: C0 and C1
#: controls, DEL, and Unicode's line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_control(match):
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text):
    """Return ``text`` with every control character written as its escape (``\\n``, ``\\x1b``)."""
    return _CONTROL.sub(_escape_control, str(text))


class TextFormatter(logging.Formatter):
    """Write a record as one readable line: time, level, logger, request id, fields (not None).

    What a client sent (an ``agent_id``, a path) may be in the message and the
    fields: control characters are escaped there, so a newline cannot start a
    forged line.  A traceback follows on lines of its own, each indented with
    ``  | ``, so none of them reads as a record either.
    """

    def format(self, record):
        parts = [_timestamp(record), record.levelname, record.name]
        if getattr(record, "request_id", None):
            parts.append(f"[{escape(record.request_id)}]")
        parts.append(escape(record.getMessage()))
        fields = getattr(record, "fields", {}).items()
        parts.extend(f"{key}={escape(value)}" for key, value in fields if value is not None)
        line = " ".join(parts)
        if record.exc_info:
            trace = self.formatException(record.exc_info).splitlines()
            line += "".join(f"\n  | {escape(text)}" for text in trace)
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


def init_app(app):
    """Log as ``app``'s settings say, unless something configured logging first."""
    if not logging.getLogger().handlers:
        logging.config.dictConfig(dict_config(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"]))
