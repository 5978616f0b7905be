"""Idempotency keys' storage: the ``idempotency_keys`` table, holding a key, storing an answer.

The request-facing side (reading the header, fingerprinting the request,
replaying an answer) is ``idempotency.py``; this module imports no Flask.

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
import os
import threading
import weakref
from contextlib import contextmanager, nullcontext

from peewee import (
    BigIntegerField,
    CharField,
    CompositeKey,
    IntegerField,
    PostgresqlDatabase,
    TextField,
    Tuple,
)

from .db import database, lock_file_path, open_lock_file
from .models import BaseModel
from .prepared import Prepared
from .storage_errors import KeyInFlight

#: One stored key in PURGE_EVERY (chosen by the key's number) deletes up to
#: PURGE_BATCH expired keys, oldest first: several times the keys stored
#: meanwhile, at one statement in eight stores instead of one in each.
PURGE_EVERY = 8
PURGE_BATCH = 100


class IdempotencyKey(BaseModel):
    """The answer given to a request sent with an ``Idempotency-Key`` (idempotency.py).

    Keyed by the caller (a hash of its token, "" without tokens) and the key;
    ``created_at`` is indexed so that expired keys are found oldest first.
    No foreign key: the answer outlives the session it created.
    """

    scope = CharField(max_length=32)
    key = CharField(max_length=255)
    fingerprint = CharField(max_length=64)
    status = IntegerField()
    body = TextField()
    location = TextField(null=True)
    etag = CharField(max_length=32, null=True)
    created_at = BigIntegerField(index=True)

    class Meta:
        table_name = "idempotency_keys"
        primary_key = CompositeKey("scope", "key")


@contextmanager
def held_in_session(scope, key):
    if not isinstance(database.obj, PostgresqlDatabase):
        yield  # held holds it
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


def held(scope, key):
    """Hold the key while the request is handled, on SQLite (see the module's docstring)."""
    if isinstance(database.obj, PostgresqlDatabase):
        return nullcontext()  # claim takes the key's advisory lock
    with _sqlite_keys_guard:  # one KeysInFlight per database, whichever thread comes first
        if database.obj not in _sqlite_keys:
            path = lock_file_path(database.obj.database, "keys-lock")
            _sqlite_keys[database.obj] = KeysInFlight(path)
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
            self._fd, self._pid = open_lock_file(self.path), os.getpid()
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


def claim(scope, key, now, ttl_us):
    """Make the key this transaction's; return its stored answer, if it has one.

    An answer stored ``ttl_us`` or longer before ``now`` has expired: the key is free again.
    """
    if isinstance(database.obj, PostgresqlDatabase):
        lock = "SELECT pg_try_advisory_xact_lock(%s)"
        if not database.execute_sql(lock, (lock_id(scope, key),)).fetchone()[0]:
            raise KeyInFlight()
    rows = _stored.rows(scope=scope, key=key)
    if not rows:
        return None
    if rows[0]["created_at"] < now - ttl_us:
        _forget.execute(scope=scope, key=key)  # expired: the key is free again
        return None
    return rows[0]


def store(scope, key, signed, answer, now, ttl_us):
    """Store ``answer`` (status, body, ``Location``, ``ETag``) under the caller's key.

    One stored key in ``PURGE_EVERY`` also deletes expired ones (older than ``ttl_us``).
    """
    status, body, location, etag = answer
    _insert.execute(
        scope=scope,
        key=key,
        fingerprint=signed,
        status=status,
        body=body,
        location=location,
        etag=etag,
        created_at=now,
    )
    if lock_id(scope, key) % PURGE_EVERY == 0:
        _purge.execute(before=now - ttl_us)


def count_expired(before):
    """Return how many stored keys are older than ``before`` (microseconds)."""
    return IdempotencyKey.select().where(IdempotencyKey.created_at < before).count()


def forget_expired(before):
    """Delete up to ``PURGE_BATCH`` keys older than ``before``, oldest first; return how many."""
    with database.atomic():
        return _purge.execute(before=before).rowcount


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
