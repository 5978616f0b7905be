"""Request ids: taken from ``X-Request-ID`` when sane, else made; echoed back.

The id names one request across nginx's log, this service's log lines and
the problem document a client got (its ``instance``).
"""

import os
import re

from flask import g, has_request_context, request

HEADER = "X-Request-ID"

# Letters, digits and ``._-`` only, so an id can go into a log line, a
# header or a JSON string as it is, whoever made it up.
_is_sane = re.compile(r"[A-Za-z0-9._-]{1,128}").fullmatch


def current():
    """Return the id of the request being handled, or None outside one."""
    if has_request_context():
        return g.get("request_id")
    return None


def _take():
    sent = request.headers.get(HEADER)
    # 128 random bits as 32 hex digits (what uuid4().hex gave, without the
    # UUID object made and taken apart on every request).
    g.request_id = sent if sent and _is_sane(sent) else os.urandom(16).hex()


def _echo(response):
    response.headers[HEADER] = g.request_id
    return response


def init_app(app):
    """Give every request an id before anything else runs, and echo it."""
    app.before_request(_take)
    app.after_request(_echo)
