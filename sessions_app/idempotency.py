"""Safe retries: a create or a message sent with an ``Idempotency-Key`` happens once.

The first request with a key is handled as usual, inside one transaction
that also stores its answer (status, body, ``Location``, ``ETag``) under the
key, with a fingerprint of the request; a request that fails rolls back and
stores nothing.  A later request with the key gets that answer again,
untouched by what happened to the session since, and writes nothing.

A key still being handled is told apart by the database:

- PostgreSQL (many workers and hosts at once): the transaction first takes
  a transaction-level advisory lock named by the key, without waiting; a
  request that cannot take it is a 409.  The lock is let go at COMMIT, after
  the answer is visible, so the next request with the key finds it.
- SQLite (the processes of one host): writers take turns (``db.WriterQueue``),
  so no transaction ever sees another's half done.  A request holds its key
  from before it queues for the write lock until its transaction ends: in
  its process, in a set of keys; across processes, as a ``lockf`` lock on
  one byte of ``<database>.keys-lock`` named by the key (the kernel lets go
  of it if the process dies).  A request that finds its key held is a 409.

Keys are kept ``IDEMPOTENCY_TTL_SECONDS``; each stored key deletes a few
expired ones, oldest first, so the table does not grow without bound.
"""

import fcntl
import hashlib
import logging
import os
import re
import threading
import weakref
from contextlib import contextmanager, nullcontext

from flask import current_app, request
from marshmallow import ValidationError
from peewee import PostgresqlDatabase, Tuple

from . import auth, jsonio
from .conditional import ETAG, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED
from .db import connected, database
from .errors import KeyInFlight, KeyReused
from .models import IdempotencyKey
from .prepared import Prepared
from .timefmt import now_us

logger = logging.getLogger(__name__)

#: 1 to 255 printable ASCII characters (a Python and a JSON Schema pattern).
KEY_PATTERN = r"^[!-~]{1,255}$"
_KEY = re.compile(KEY_PATTERN)
BAD_KEY = "Must be 1 to 255 printable ASCII characters, without spaces."
#: One stored key in PURGE_EVERY (chosen by the key's number) deletes up to
#: PURGE_BATCH expired keys, oldest first: several times the keys stored
#: meanwhile, at one statement in eight stores instead of one in each.
PURGE_EVERY = 8
PURGE_BATCH = 100


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
    scope, signed, now = auth.caller(), fingerprint(body), now_us()
    with _held(scope, key), connected(), database.transaction():
        stored = _claim(scope, key, now)
        if stored is not None:
            return _replay(stored, signed)
        response = current_app.make_response(act())
        if response.status_code == 201:
            _store(scope, key, signed, response, now)
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
    scope, signed = auth.caller(), fingerprint(body)
    with _held(scope, key), connected(), _held_in_session(scope, key):
        with database.transaction():
            stored = _claim(scope, key, now_us())
        if stored is not None:
            return _replay(stored, signed)
        response = current_app.make_response(act())
        if response.status_code < 300:
            with database.transaction():
                _store(scope, key, signed, response, now_us())
    return response


@contextmanager
def _held_in_session(scope, key):
    if not isinstance(database.obj, PostgresqlDatabase):
        yield  # _held holds it
        return
    number = lock_id(scope, key)
    if not database.execute_sql("SELECT pg_try_advisory_lock(%s)", (number,)).fetchone()[0]:
        raise KeyInFlight()
    try:
        yield
    finally:
        database.execute_sql("SELECT pg_advisory_unlock(%s)", (number,))


def lock_id(scope, key):
    """Return the 64-bit number naming a caller's key (its advisory lock, its locked byte)."""
    digest = hashlib.sha256(f"idempotency\0{scope}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _held(scope, key):
    """Hold the key while the request is handled, on SQLite (see the module's docstring)."""
    if isinstance(database.obj, PostgresqlDatabase):
        return nullcontext()  # _claim takes the key's advisory lock
    with _sqlite_keys_guard:  # one KeysInFlight per database, whichever thread comes first
        if database.obj not in _sqlite_keys:
            path = database.obj.database
            in_memory = path == ":memory:" or path.startswith("file::memory:")
            _sqlite_keys[database.obj] = KeysInFlight(None if in_memory else f"{path}.keys-lock")
        keys = _sqlite_keys[database.obj]
    return keys.hold(lock_id(scope, key))


class KeysInFlight:
    """Keys being handled by this host's processes; a second holder gets ``KeyInFlight``.

    Threads of a process see each other's keys in a set; processes see them
    as ``lockf`` locks on one byte each of ``path`` (at the key's number), a
    file opened once per process.  POSIX record locks belong to the process,
    so the set keeps its threads from sharing one.
    """

    def __init__(self, path):
        self.path = path
        self._keys, self._guard = set(), threading.Lock()
        self._fd, self._pid = None, None

    @contextmanager
    def hold(self, number):
        with self._guard:
            if number in self._keys:
                raise KeyInFlight()
            self._keys.add(number)
        try:
            with self._locked(number & (2**62 - 1)):
                yield
        finally:
            with self._guard:
                self._keys.discard(number)

    @contextmanager
    def _locked(self, offset):
        if self.path is None:
            yield
            return
        if self._pid != os.getpid():
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
            self._fd, self._pid = os.open(self.path, flags, 0o660), os.getpid()
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except OSError:
            raise KeyInFlight() from None
        try:
            yield
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, offset)


_sqlite_keys = weakref.WeakKeyDictionary()  # database -> KeysInFlight
_sqlite_keys_guard = threading.Lock()


def _claim(scope, key, now):
    """Make the key this transaction's; return its stored answer, if it has one."""
    if isinstance(database.obj, PostgresqlDatabase):
        lock = "SELECT pg_try_advisory_xact_lock(%s)"
        if not database.execute_sql(lock, (lock_id(scope, key),)).fetchone()[0]:
            raise KeyInFlight()
    rows = _stored.rows(scope=scope, key=key)
    if not rows:
        return None
    if rows[0]["created_at"] < now - _ttl_us():
        _forget.execute(scope=scope, key=key)  # expired: the key is free again
        return None
    return rows[0]


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


def _store(scope, key, signed, response, now):
    _insert.execute(
        scope=scope,
        key=key,
        fingerprint=signed,
        status=response.status_code,
        body=response.get_data(as_text=True),
        location=response.headers.get("Location"),
        etag=response.headers.get(ETAG),
        created_at=now,
    )
    if lock_id(scope, key) % PURGE_EVERY == 0:
        _purge.execute(before=now - _ttl_us())


def count_expired(before):
    """Return how many stored keys are older than ``before`` (microseconds)."""
    return IdempotencyKey.select().where(IdempotencyKey.created_at < before).count()


def forget_expired(before):
    """Delete up to ``PURGE_BATCH`` keys older than ``before``, oldest first; return how many."""
    with database.atomic():
        return _purge.execute(before=before).rowcount


def _ttl_us():
    return current_app.config["IDEMPOTENCY_TTL_SECONDS"] * 1_000_000


# -- the statements, generated once per database (see prepared.py) -----------
# Unscoped: keys belong to a caller (its token), not to an agent.

_stored = Prepared(
    lambda scope, key: IdempotencyKey.select().where(
        (IdempotencyKey.scope == scope) & (IdempotencyKey.key == key)
    ),
    unscoped=True,
)

_forget = Prepared(
    lambda scope, key: IdempotencyKey.delete().where(
        (IdempotencyKey.scope == scope) & (IdempotencyKey.key == key)
    ),
    unscoped=True,
)

# A value left None (no Location, no ETag) is left out: the column is NULL.
_insert = Prepared(lambda **row: IdempotencyKey.insert(**row), unscoped=True)


def _expired(before):
    query = (
        IdempotencyKey.select(IdempotencyKey.scope, IdempotencyKey.key)
        .where(IdempotencyKey.created_at < before)
        .order_by(IdempotencyKey.created_at)
        .limit(PURGE_BATCH)
    )
    # Two writers purging at once on PostgreSQL take different rows instead
    # of waiting on (or deadlocking over) the same ones.
    return query.for_update(skip_locked=True) if database.for_update else query


_purge = Prepared(
    lambda before: IdempotencyKey.delete().where(
        Tuple(IdempotencyKey.scope, IdempotencyKey.key).in_(_expired(before))
    ),
    unscoped=True,
)
