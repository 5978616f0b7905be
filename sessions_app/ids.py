"""Server-generated identifiers: time-ordered, URL-safe, never reused.

An id is a prefix and 28 characters of Crockford base32 (lower case) that
encode 56 bits of Unix microseconds followed by 80 random bits.  The alphabet
sorts in ASCII order, so ids of one kind sort by creation time and "newest
first" is a plain scan of the primary key.
"""

import base64
import os
import re

from .timefmt import now_us

_RFC4648 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_CROCKFORD = b"0123456789abcdefghjkmnpqrstvwxyz"
_TO_CROCKFORD = bytes.maketrans(_RFC4648, _CROCKFORD)
TOKEN_PATTERN = "[0-9a-hjkmnp-tv-z]{28}"
SESSION_ID_PATTERN = "session-" + TOKEN_PATTERN
MESSAGE_ID_PATTERN = "msg-" + TOKEN_PATTERN
_MAX_US = 0xFF_FFFF_FFFF_FFFF  # 56 bits of microseconds


def _token(at_us, random_bytes):
    at_us = min(max(at_us, 0), _MAX_US)
    raw = at_us.to_bytes(7, "big") + random_bytes
    return base64.b32encode(raw)[:28].translate(_TO_CROCKFORD).decode("ascii")


def new_token(at_us=None):
    """Return a 28-character token: 56 bits of microseconds, 80 random bits."""
    if at_us is None:
        at_us = now_us()
    return _token(at_us & _MAX_US, os.urandom(10))


def new_session_id(at_us=None):
    """Return a new session id, ordered by ``at_us`` (default: now)."""
    return "session-" + new_token(at_us)


def new_message_id(at_us=None):
    """Return a new message id, ordered by ``at_us`` (default: now)."""
    return "msg-" + new_token(at_us)


is_session_id = re.compile(SESSION_ID_PATTERN).fullmatch


def first_session_id(at_us):
    """Return the lowest session id made at ``at_us`` (clamped to the ids' range)."""
    return "session-" + _token(at_us, bytes(10))


def last_session_id(at_us):
    """Return the highest session id made at ``at_us`` (clamped to the ids' range)."""
    return "session-" + _token(at_us, b"\xff" * 10)
