"""Safe retries: a create or a message sent with an ``Idempotency-Key`` happens once.

The first request with a key is handled as usual, inside one transaction
that also stores its answer (status, body, ``Location``, ``ETag``) under the
key, with a fingerprint of the request; a request that fails rolls back and
stores nothing.  A later request with the key gets that answer again,
untouched by what happened to the session since, and writes nothing.

This module is the request's side: the header, the fingerprint, the answer
made and replayed.  Holding a key and storing its answer (a key still being
handled is a 409) are ``idempotency_keys.py``, which imports no Flask.
Keys are kept ``IDEMPOTENCY_TTL_SECONDS``.
"""

import hashlib
import logging
import re

from flask import current_app, request
from marshmallow import ValidationError

from . import auth, jsonio
from . import idempotency_keys as keys
from .conditional import ETAG, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED
from .db import connected, database
from .errors import KeyReused
from .timefmt import now_us

logger = logging.getLogger(__name__)

#: 1 to 255 printable ASCII characters (a Python and a JSON Schema pattern).
KEY_PATTERN = r"^[!-~]{1,255}$"
_KEY = re.compile(KEY_PATTERN)
BAD_KEY = "Must be 1 to 255 printable ASCII characters, without spaces."


def load_key():
    """Return the request's ``Idempotency-Key``, None without one; 422 if malformed."""
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is not None and not _KEY.fullmatch(key):
        raise ValidationError({IDEMPOTENCY_KEY: [BAD_KEY]})
    return key


def fingerprint(body):
    """Return the request's fingerprint: its endpoint, its path's values and ``body``.

    ``…/message`` and ``…/messages`` are one endpoint.  ``body`` is the parsed
    JSON as sent (before defaults), serialized with sorted keys, so member
    order and whitespace do not count and an omitted field differs from its
    default.
    """
    signed = jsonio.canonical([request.endpoint, request.view_args or {}, body])
    return hashlib.sha256(signed).hexdigest()


def once(key, body, act):
    """Answer with ``act()`` (a view's return value) once per ``key`` and caller.

    ``body`` is the request's parsed JSON body.  Without a key ``act()`` is
    simply called.
    """
    if key is None:
        return act()
    scope, signed, now, ttl_us = auth.caller(), fingerprint(body), now_us(), _ttl_us()
    with keys.held(scope, key), connected(), database.transaction():
        stored = keys.claim(scope, key, now, ttl_us)
        if stored is not None:
            return _replay(stored, signed)
        response = current_app.make_response(act())
        if response.status_code == 201:
            _store(scope, key, signed, response, now, ttl_us)
    return response


def once_in_steps(key, body, act):
    """Answer with ``act()`` once per ``key``, for a request that commits in several steps.

    A bulk change (contract 11) commits batch by batch, so its answer cannot
    share a transaction with its writes: the key is held for the whole
    request (on PostgreSQL a session-level advisory lock on the request's
    connection), the answer is stored when it succeeded (status below 300),
    and a request that failed midway stores nothing: a retry carries on
    with the sessions still to change.
    """
    if key is None:
        return act()
    scope, signed, ttl_us = auth.caller(), fingerprint(body), _ttl_us()
    with keys.held(scope, key), connected(), keys.held_in_session(scope, key):
        with database.transaction():
            stored = keys.claim(scope, key, now_us(), ttl_us)
        if stored is not None:
            return _replay(stored, signed)
        response = current_app.make_response(act())
        if response.status_code < 300:
            with database.transaction():
                _store(scope, key, signed, response, now_us(), ttl_us)
    return response


def _replay(stored, signed):
    if stored["fingerprint"] != signed:
        raise KeyReused(IDEMPOTENCY_KEY)
    headers = {IDEMPOTENT_REPLAYED: "true"}
    if stored["location"] is not None:
        headers["Location"] = stored["location"]
    if stored["etag"] is not None:
        headers[ETAG] = stored["etag"]
    logger.info("Replayed the answer stored for an Idempotency-Key")
    return current_app.response_class(
        stored["body"], status=stored["status"], headers=headers, mimetype="application/json"
    )


def _store(scope, key, signed, response, now, ttl_us):
    answer = (
        response.status_code,
        response.get_data(as_text=True),
        response.headers.get("Location"),
        response.headers.get(ETAG),
    )
    keys.store(scope, key, signed, answer, now, ttl_us)


def _ttl_us():
    return current_app.config["IDEMPOTENCY_TTL_SECONDS"] * 1_000_000
