"""The change feed: each write's change, recorded in its transaction, read back in seq order.

Order is the whole point of the feed, so here is why ``seq > cursor`` is
enough for a reader to see every change exactly once.

**Claim.** Any snapshot a reader takes holds exactly the changes with
``seq`` up to some value (a prefix, with gaps only where a transaction that
took a number rolled back, and those numbers never appear).  So a reader who
has seen every change up to ``cursor`` and reads ``seq > cursor`` can never
later find a change below the newest one it read.

**SQLite.** Writers commit one at a time: every write transaction of every
process on the file holds ``db.WriterQueue`` from BEGIN to COMMIT, and
SQLite's own write lock besides.  A transaction takes its seq
(``AUTOINCREMENT``) while it holds the lock, so seq order is commit order.
``AUTOINCREMENT`` also means a seq is never reused, even after prune removed
the newest change.

**PostgreSQL.** A sequence hands out numbers at insert, not at commit, and
transactions commit in any order.  Storing each change's transaction id and
reading only below ``pg_snapshot_xmin`` does not close the gap by itself: a
transaction's xid is assigned at its first write, earlier than the moment it
takes its seq, so a transaction T1 (xid 100, still running) can hold seq 10
while T2 (xid 99, committed) holds seq 11: the reader's xmin is 100, T2's row
passes ``xid < xmin``, the reader moves to 11 and never sees 10.
Instead the append serializes: ``record`` runs as the last statement of the
write transaction, and takes the transaction-level advisory lock
``_APPEND_LOCK`` in the same statement, before the row (and so its
``nextval``) is produced.  The lock is held until the transaction ends; at
COMMIT PostgreSQL marks the transaction committed and visible to new
snapshots (``ProcArrayEndTransaction``) before it releases its locks.  So
when T2 takes the lock after T1, T1 is already visible to every snapshot, T2
gets a larger seq, and any snapshot that sees T2 sees T1: seq order is commit
order.  The lock is held only from the change INSERT to the end of COMMIT;
what it costs writes is measured in README.rst (Performance).
"""

import logging
import time

import peewee
from flask import current_app
from peewee import (
    SQL,
    BigAutoField,
    BigIntegerField,
    Case,
    CharField,
    IntegerField,
    Model,
    NodeList,
    PostgresqlDatabase,
)

from . import changes, waiting
from .db import connected, database
from .errors import CursorGone, CursorUnknown, SessionNotFound, WaitingFull
from .prepared import Prepared
from .timefmt import now_us

logger = logging.getLogger(__name__)

#: Any number for pg_advisory_xact_lock, the same in every process.
_APPEND_LOCK = 0x5E55_FEED

_COLUMNS = (
    "type",
    "session_id",
    "agent_id",
    "task_id",
    "status",
    "version",
    "at",
    "message_id",
    "role",
    "changed",
    "reason",
)


class SeqField(BigAutoField):
    """A 64-bit key the database assigns and never reuses (``AUTOINCREMENT`` on SQLite)."""

    def ddl(self, ctx):
        node = super().ddl(ctx)
        db = self.model._meta.database
        if isinstance(getattr(db, "obj", db), PostgresqlDatabase):
            return node
        return NodeList((node, SQL("AUTOINCREMENT")))


class Change(Model):
    """One committed write, as the feed tells it; tombstones outlive their session."""

    seq = SeqField()
    type = CharField(max_length=24)
    session_id = CharField(max_length=40)
    agent_id = CharField(max_length=255)
    task_id = CharField(max_length=255, null=True)
    status = CharField(max_length=16)
    version = IntegerField()
    at = BigIntegerField()
    message_id = CharField(max_length=40, null=True)
    role = CharField(max_length=16, null=True)
    changed = CharField(max_length=64, null=True)  # comma-separated field names
    reason = CharField(max_length=16, null=True)

    class Meta:
        database = database
        table_name = "changes"
        indexes = (
            (("session_id", "seq"), False),
            (("agent_id", "seq"), False),
            (("task_id", "seq"), False),
            # Retention removes by age, from the oldest.
            (("at",), False),
        )


class FeedMark(Model):
    """The newest seq retention has removed: a cursor before it may have lost changes (410)."""

    id = IntegerField(primary_key=True)
    removed_through = BigIntegerField()

    class Meta:
        database = database
        table_name = "feed_marks"


MODELS = (Change, FeedMark)


# -- recording --------------------------------------------------------------


def record(kind, session, at, **extra):
    """Append the change ``kind`` of ``session`` (a dict) to the feed, in the current transaction.

    Call it as the last statement before COMMIT: on PostgreSQL it takes the
    append lock (see the module's docstring), held until the transaction ends.
    ``extra``: ``message_id`` and ``role``, ``changed`` (field names) or ``reason``.
    """
    changed = extra.get("changed")
    values = {
        "type": kind,
        "session_id": session["id"],
        "agent_id": session["agent_id"],
        "task_id": session["task_id"],
        "status": session["status"],
        "version": session["version"],
        "at": at,
        "message_id": extra.get("message_id"),
        "role": extra.get("role"),
        "changed": ",".join(changed) if changed else None,
        "reason": extra.get("reason"),
    }
    db = database.obj
    db.execute_sql(_append_sql(db), [values[name] for name in _COLUMNS])
    # The waiters are woken once the outermost transaction commits (a keyed
    # request's, say), never before: they would look and find nothing yet.
    database.after_commit(committed)


def record_many(kind, sessions, at, **extra):
    """Append the change ``kind`` of each of ``sessions`` as ``record`` does, in one round trip.

    A bulk change's batch (``bulk.py``): the statement is ``record``'s, run
    for every session at once (psycopg pipelines the rows), so the append
    lock is held for one round trip rather than one per session.
    """
    if not sessions:
        return
    changed = extra.get("changed")
    rows = [
        {
            "type": kind, "session_id": session["id"], "agent_id": session["agent_id"],
            "task_id": session["task_id"], "status": session["status"],
            "version": session["version"], "at": at, "message_id": extra.get("message_id"),
            "role": extra.get("role"), "changed": ",".join(changed) if changed else None,
            "reason": extra.get("reason"),
        }
        for session in sessions
    ]  # fmt: skip
    db = database.obj
    with peewee.__exception_wrapper__:  # driver errors as peewee's, as execute_sql gives them
        cursor = db.cursor()
        try:
            cursor.executemany(_append_sql(db), [[row[name] for name in _COLUMNS] for row in rows])
        finally:
            cursor.close()
    database.after_commit(committed)


_append_sql_by_kind = {}


def _append_sql(db):
    postgres = isinstance(db, PostgresqlDatabase)
    if postgres not in _append_sql_by_kind:
        columns = ", ".join(_COLUMNS)
        slots = ", ".join([db.param] * len(_COLUMNS))
        if postgres:
            # The lock comes from the FROM item, so it is held before the
            # row's nextval() default is computed.
            sql = (
                f"INSERT INTO changes ({columns}) SELECT {slots} "
                f"FROM (SELECT pg_advisory_xact_lock({_APPEND_LOCK})) AS turn"
            )
        else:
            sql = f"INSERT INTO changes ({columns}) VALUES ({slots})"
        _append_sql_by_kind[postgres] = sql
    return _append_sql_by_kind[postgres]


# -- reading ----------------------------------------------------------------


def marks(db=None):
    """Return ``(newest, removed_through)``: the newest committed seq, and retention's mark.

    ``newest`` is the mark itself when retention removed every change.
    """
    row = (database.obj if db is None else db).execute_sql(_MARKS_SQL).fetchone()
    removed = row[1] or 0
    return max(row[0] or 0, removed), removed


def position(cursor, name="cursor"):
    """Return the seq a request continues after, for ``cursor`` (None, ``latest`` or a seq).

    Raises ``CursorGone`` (410) for a cursor before what retention removed,
    ``CursorUnknown`` (422, naming ``name``) for one past every change.
    """
    newest, removed = marks()
    if cursor is None:
        return removed
    if cursor == changes.LATEST:
        return newest
    if cursor < removed:
        raise CursorGone()
    if cursor > newest:
        raise CursorUnknown(name)
    return cursor


def page(after, limit, session_id=None, agent_id=None, task_id=None, types=None):
    """Return ``(changes, next_position)``: up to ``limit`` matching changes after ``after``.

    A reader sees a prefix of the feed (module docstring), so the newest seq
    read first bounds what the page looked at: when fewer than ``limit``
    match, the page has looked at everything up to it.
    """
    horizon, _removed = marks()
    if horizon <= after:
        return [], after
    type_slots = _type_slots(types)
    rows = _page.rows(
        after=after,
        newest=horizon,
        limit=limit,
        session_id=session_id,
        agent_id=agent_id,
        task_id=task_id,
        **type_slots,
    )
    found = [as_change(row) for row in rows]
    if len(found) == limit:
        return found, found[-1]["seq"]
    return found, horizon


# -- waiting ------------------------------------------------------------------


def committed():
    """Wake the waiters of a write that just committed (on PostgreSQL, of every host).

    ``record`` has it called after each commit that recorded a change.
    """
    _hub().announce()


def read(cursor=None, limit=100, wait=0, gone=None, **filters):
    """Return ``(changes, next_position)`` after ``cursor``, waiting up to ``wait`` seconds.

    With nothing to return at once, the request waits for a matching change
    holding a waiting slot, not a database connection.
    """
    with connected():
        found, through = page(position(cursor), limit, **filters)
    if found or not wait:
        return found, through
    deadline = time.monotonic() + wait
    # No connection is held from here on: each read below takes one briefly.
    with _subscription(matcher(**filters)) as subscription:
        while time.monotonic() < deadline:
            if not subscription.follow(through):
                # The watcher is past ``through``: read what it has handed out.
                with database.connection_context():
                    found, through = page(through, limit, **filters)
                if found:
                    return found, through
                continue
            if not _wait(subscription, deadline, gone):
                break
            found, through = subscription.take(limit)
            if found:
                return found, through
        return [], subscription.take()[1] if subscription.after is not None else through


def wait_for_session(session_id, read_page, wait, gone=None):
    """Return ``read_page()``; when it is empty, wait up to ``wait`` seconds for a message.

    Raises ``SessionNotFound`` when the session is deleted meanwhile.
    """
    if not wait:
        return read_page()
    # Where the feed stands before the read: a message committed after it wakes the wait.
    with connected():
        start = marks()[0]
    rows = read_page()
    if rows:
        return rows
    deadline = time.monotonic() + wait
    match = matcher(session_id=session_id, types=(changes.MESSAGE_CREATED, changes.SESSION_DELETED))
    with _subscription(match) as subscription:
        through = start
        while time.monotonic() < deadline:
            if subscription.follow(through):
                if not _wait(subscription, deadline, gone):
                    break
                found, through = subscription.take()
                if any(c["type"] == changes.SESSION_DELETED for c in found):
                    raise SessionNotFound(session_id)
            else:
                with database.connection_context():
                    through = marks()[0]
            with database.connection_context():
                rows = read_page()
            if rows:
                return rows
    return rows


class Follower:
    """A stream's source: the matching changes after a position, as they are committed.

    Made before the response starts, so a bad position (410, 422) or a full
    house (503) is answered at once; iterating yields each change, or None
    when ``heartbeat`` seconds passed without one, until ``max_seconds``.
    """

    def __init__(self, cursor, heartbeat, max_seconds, name="cursor", gone=None, **filters):
        with connected():
            self.after = position(cursor, name)
        self.filters = filters
        self.heartbeat = heartbeat
        self.end = time.monotonic() + max_seconds
        self.gone = gone or _never
        self.subscription = _subscribe(matcher(**filters), STREAM)

    def __iter__(self):
        subscription, quiet_since = self.subscription, time.monotonic()
        following = False
        while time.monotonic() < self.end and not self.gone():
            if not following:
                following = subscription.follow(self.after)
                if not following:
                    with database.connection_context():
                        found, self.after = page(self.after, _STREAM_BATCH, **self.filters)
                    yield from found
                    if found:
                        quiet_since = time.monotonic()
                    continue
            now = time.monotonic()
            timeout = min(self.end, quiet_since + self.heartbeat) - now
            if subscription.wait(max(0, min(timeout, waiting.CLIENT_CHECK_INTERVAL))):
                found, self.after = subscription.take()
                yield from found
                quiet_since = time.monotonic()
            elif time.monotonic() >= quiet_since + self.heartbeat:
                yield None
                quiet_since = time.monotonic()

    def close(self):
        """Give the waiting slot back."""
        self.subscription.close()


_STREAM_BATCH = 1000


def _never():
    return False


def _wait(subscription, deadline, gone):
    """Wait for a matching change until ``deadline``; False on time out or a gone client."""
    gone = gone or _never
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if subscription.wait(min(remaining, waiting.CLIENT_CHECK_INTERVAL)):
            return True
        if gone():
            return False


def _hub():
    return waiting.hub(after, newest)


POLL, STREAM = "poll", "stream"


def _subscribe(match, kind):
    try:
        return _hub().subscribe(match, current_app.config["FEED_WAITERS_MAX"], kind)
    except waiting.Full:
        raise WaitingFull(kind) from None


class _subscription:
    """``with _subscription(match) as s``: a waiting slot, given back at the end."""

    def __init__(self, match):
        self.match = match

    def __enter__(self):
        self.subscription = _subscribe(self.match, POLL)
        return self.subscription

    def __exit__(self, *exc):
        self.subscription.close()


def after(db, seq, limit):
    """Return up to ``limit`` changes of any kind after ``seq`` in ``db``, oldest first."""
    return [as_change(row) for row in _after.rows(db, after=seq, limit=limit)]


def newest(db):
    """Return the newest committed seq in ``db``."""
    return marks(db)[0]


def as_change(row):
    """Return a stored change as the feed shows it (``at`` still in microseconds)."""
    change = {
        "seq": row["seq"],
        "type": row["type"],
        "session_id": row["session_id"],
        "agent_id": row["agent_id"],
        "task_id": row["task_id"],
        "status": row["status"],
        "version": row["version"],
        "at": row["at"],
    }
    kind = row["type"]
    if kind == changes.MESSAGE_CREATED:
        change["message_id"] = row["message_id"]
        change["role"] = row["role"]
    elif kind == changes.SESSION_UPDATED:
        change["changed"] = row["changed"].split(",")
    elif kind == changes.SESSION_DELETED:
        change["reason"] = row["reason"]
    return change


def matcher(session_id=None, agent_id=None, task_id=None, types=None):
    """Return ``match(change)``: whether a change passes the filters, as ``page`` reads them."""
    wanted = [
        (name, value)
        for name, value in (
            ("session_id", session_id),
            ("agent_id", agent_id),
            ("task_id", task_id),
        )
        if value is not None
    ]
    kinds = frozenset(types) if types else None

    def match(change):
        if kinds is not None and change["type"] not in kinds:
            return False
        return all(change[name] == value for name, value in wanted)

    # The hub offers a change only to the waiters filed under its session or agent.
    match.key = next((item for item in wanted if item[0] != "task_id"), None)
    return match


def _type_slots(types):
    # Four slots, the unused ones repeating the first type: one statement
    # shape for any set of types, and "type IN (a, b, a, a)" is "IN (a, b)".
    if not types:
        return dict.fromkeys(_TYPE_SLOTS)
    padded = list(types) + [types[0]] * (len(_TYPE_SLOTS) - len(types))
    return dict(zip(_TYPE_SLOTS, padded, strict=True))


_TYPE_SLOTS = tuple(f"type{n}" for n in range(len(changes.TYPES)))

_MARKS_SQL = (
    "SELECT (SELECT MAX(seq) FROM changes), (SELECT removed_through FROM feed_marks WHERE id = 1)"
)


def _page_query(after, newest, limit, session_id=None, agent_id=None, task_id=None, **type_slots):
    query = Change.select().where((Change.seq > after) & (Change.seq <= newest))
    for field, value in (
        (Change.session_id, session_id),
        (Change.agent_id, agent_id),
        (Change.task_id, task_id),
    ):
        if value is not None:
            query = query.where(field == value)
    kinds = [value for value in type_slots.values() if value is not None]
    if kinds:
        query = query.where(Change.type.in_(kinds))
    return query.order_by(Change.seq).limit(limit)


_page = Prepared(_page_query)
_after = Prepared(
    lambda after, limit: Change.select().where(Change.seq > after).order_by(Change.seq).limit(limit)
)


# -- retention ----------------------------------------------------------------


def count_older_than(cutoff_us):
    """Return how many changes were recorded before ``cutoff_us`` (epoch microseconds)."""
    with database.connection_context():
        return Change.select().where(Change.at < cutoff_us).count()


def remove_older_than(cutoff_us, batch=1000):
    """Delete the changes recorded before ``cutoff_us``, ``batch`` per transaction; return how many.

    Each batch also raises the mark that turns older cursors into a 410,
    in the same transaction as the delete.
    """
    removed = 0
    with database.connection_context():
        while True:
            with database.atomic():
                seqs = [
                    row[0]
                    for row in Change.select(Change.seq)
                    .where(Change.at < cutoff_us)
                    .order_by(Change.seq)
                    .limit(batch)
                    .tuples()
                ]
                if not seqs:
                    break
                Change.delete().where(Change.seq.in_(seqs)).execute()
                _raise_mark(seqs[-1])
            removed += len(seqs)
    if removed:
        logger.info("Removed %d changes recorded before %d", removed, cutoff_us)
    return removed


def _raise_mark(seq):
    higher = Case(None, [(FeedMark.removed_through < seq, seq)], FeedMark.removed_through)
    (
        FeedMark.insert(id=1, removed_through=seq)
        .on_conflict(conflict_target=[FeedMark.id], update={FeedMark.removed_through: higher})
        .execute()
    )


def retention_cutoff(retention_seconds, now=None):
    """Return the instant (epoch microseconds) before which changes may be removed."""
    return (now_us() if now is None else now) - retention_seconds * 1_000_000
