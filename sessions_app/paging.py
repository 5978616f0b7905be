"""Keyset paging: pages cut from ``limit + 1`` rows read after a cursor,
and the opaque cursors of the session list.

A session-list cursor names a position in one order: the sort key of the
last item returned (``id`` for ``created_at``, ``(last_active, id)`` for
``last_active``) and the sort and order it belongs to.  It is that text in
base64url with a short check value, so clients treat it as opaque and a
cursor edited by hand is refused (the check is not a secret: it catches
mistakes and tampering, while any position a client could name is a
position the list may continue from); only bytes this module could have
written decode, and a cursor of another sort or order is refused.
"""

import base64
import binascii
import hashlib
import re

from .fields import INT64_MAX, INT64_MIN, NOT_ISSUED
from .ids import SESSION_ID_PATTERN

SORTS = ("created_at", "last_active")
ORDERS = ("desc", "asc")

_CHECK_BYTES = 4
_POSITION = re.compile(
    rf"(?P<sort>[cl])(?P<order>[da])"
    rf"(?::(?P<at>0|-?[1-9][0-9]{{0,18}}))?:(?P<id>{SESSION_ID_PATTERN})"
).fullmatch
_LEGACY = re.compile(SESSION_ID_PATTERN).fullmatch


class CursorError(ValueError):
    """A cursor this service could not have issued for the list asked for."""


def cut_page(rows, limit, cursor_of):
    """Return ``(items, next_cursor)`` from up to ``limit + 1`` rows.

    The extra row only tells that another page follows; the cursor is the key
    of the last item returned, so the next page starts right after it.
    """
    if len(rows) <= limit:
        return rows, None
    items = rows[:limit]
    return items, cursor_of(items[-1])


def session_cursor(sort, order, row):
    """Return the cursor that continues a ``sort``/``order`` list after ``row``."""
    text = sort[0] + order[0]
    if sort == "last_active":
        text += f":{row['last_active']}"
    text += f":{row['id']}"
    return _encode(text)


def session_position(cursor, sort, order):
    """Return ``(last_active or None, id)`` after which ``cursor`` continues.

    Raise ``CursorError`` unless ``session_cursor`` could have written it for
    this ``sort`` and ``order``.  A bare session id, the cursor of earlier
    versions, still continues the default order (newest created first).
    """
    if _LEGACY(cursor):
        if (sort, order) != (SORTS[0], ORDERS[0]):
            raise CursorError("This cursor continues a list with sort=created_at&order=desc.")
        return None, cursor
    text = _decode(cursor)
    match = text is not None and _POSITION(text)
    if not match:
        raise CursorError(NOT_ISSUED)
    issued_for = (
        {"c": "created_at", "l": "last_active"}[match["sort"]],
        {"d": "desc", "a": "asc"}[match["order"]],
    )
    at = match["at"]
    if (at is None) != (issued_for[0] == "created_at") or (
        at is not None and not INT64_MIN <= int(at) <= INT64_MAX
    ):
        raise CursorError(NOT_ISSUED)
    if issued_for != (sort, order):
        raise CursorError(
            f"This cursor continues a list with sort={issued_for[0]}&order={issued_for[1]}."
        )
    return (None if at is None else int(at)), match["id"]


def _check(data):
    return hashlib.blake2b(data, digest_size=_CHECK_BYTES, person=b"sessions-cursor").digest()


def _encode(text):
    data = text.encode("ascii")
    return base64.urlsafe_b64encode(data + _check(data)).rstrip(b"=").decode("ascii")


def _decode(cursor):
    """Return the text inside ``cursor``, or None unless ``_encode`` wrote exactly it."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data, check = raw[:-_CHECK_BYTES], raw[-_CHECK_BYTES:]
        text = data.decode("ascii")
    except (binascii.Error, UnicodeError, ValueError):
        return None
    if check != _check(data) or _encode(text) != cursor:
        return None
    return text
