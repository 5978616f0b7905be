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
transactions commit in any order, so a seq taken by the write itself could
become visible after a larger one.  Storing each change's transaction id
and reading only below ``pg_snapshot_xmin`` does not close the gap: a
transaction's xid is assigned at its first write, earlier than the moment
it takes its seq, and any long transaction anywhere in the cluster holds
every reader back.  Serializing the writers (a lock from the change's insert
to COMMIT) does close it, but caps the whole fleet at one commit at a time.

So a write does not take its seq.  It appends its change to ``change_queue``
(``record``), in its own transaction, and commits with no lock shared with
any other writer.  A *publishing pass* (``publish``) then moves every
committed change from the queue into ``changes`` in one transaction, in
queue order, taking the seqs there; passes run one at a time under the
transaction-level advisory lock ``_APPEND_LOCK`` (at COMMIT PostgreSQL
makes a transaction visible before it releases its locks).  So the seqs of
one pass follow those of the pass before, every snapshot that sees a pass
sees the passes before it, and a reader sees a prefix.  Commit order holds
where it can be observed: a write that began after another committed is
queued after it (its queue id is drawn later), so it is published in the
same pass behind it, or in a later pass.  Each worker's publisher runs a
pass for the commits its writers announce (``waiting.py``), and a writer
answers once its change is published, so a client that wrote then reads
the feed finds its change.  A long transaction elsewhere in the database
delays nothing: a pass waits only for the pass before it.
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
    OperationalError,
    PostgresqlDatabase,
)

from . import changes, scoping, waiting
from .db import connected, database
from .errors import CursorGone, CursorUnknown, SessionNotFound, WaitingFull
from .prepared import Prepared
from .timefmt import now_us

logger = logging.getLogger(__name__)

#: Any number for pg_advisory_xact_lock, the same in every process (and the one
#: earlier releases took in each write, so a fleet half upgraded keeps one order).
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


class _ChangeColumns(Model):
    """What a change says, in the feed and in the queue (``QueuedChange``)."""

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


class Change(_ChangeColumns):
    """One committed write, as the feed tells it; tombstones outlive their session."""

    id = None  # its key is the seq
    seq = SeqField()

    class Meta:
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


class QueuedChange(_ChangeColumns):
    """PostgreSQL: a committed write's change, waiting for a publishing pass to give it its seq."""

    id = BigAutoField()

    class Meta:
        table_name = "change_queue"


MODELS = (Change, FeedMark)
#: Tables PostgreSQL has and SQLite does not (its writers take their seq at once).
POSTGRES_MODELS = (QueuedChange,)


# -- recording --------------------------------------------------------------


def record(kind, session, at, **extra):
    """Append the change ``kind`` of ``session`` (a dict) to the feed, in the current transaction.

    On PostgreSQL it goes to the queue that publishing passes move into the
    feed (see the module's docstring).  ``extra``: ``message_id`` and
    ``role``, ``changed`` (field names) or ``reason``.
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
    for every session at once (psycopg pipelines the rows): one round trip
    rather than one per session.
    """
    if not sessions:
        return
    if len(sessions) == 1:
        # One session (a PATCH, a DELETE): no batch to send.
        record(kind, sessions[0], at, **extra)
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
        table = "change_queue" if postgres else "changes"
        slots = ", ".join([db.param] * len(_COLUMNS))
        sql = f"INSERT INTO {table} ({', '.join(_COLUMNS)}) VALUES ({slots})"
        _append_sql_by_kind[postgres] = sql
    return _append_sql_by_kind[postgres]


#: The most changes one publishing pass moves (a larger queue takes several).
_PUBLISH_BATCH = 5000
# One message, one round trip: the append lock is held while the server
# runs it (and flushes its COMMIT), never across the network.
_PUBLISH_SQL = (
    f"BEGIN; SELECT pg_advisory_xact_lock({_APPEND_LOCK}); "
    "WITH moved AS (DELETE FROM change_queue WHERE id IN "
    f"(SELECT id FROM change_queue ORDER BY id LIMIT {_PUBLISH_BATCH}) RETURNING *), "
    f"published AS (INSERT INTO changes ({', '.join(_COLUMNS)}) "
    f"SELECT {', '.join(_COLUMNS)} FROM moved ORDER BY id RETURNING seq) "
    f"SELECT count(*), CASE WHEN count(*) > 0 THEN pg_notify('{waiting.CHANNEL}', '') END "
    "FROM published; COMMIT"
)


def publish(conn):
    """Move the committed changes of ``change_queue`` into the feed, in order; return how many.

    PostgreSQL only; ``conn`` is a psycopg connection in autocommit mode.
    Each batch is one transaction under ``_APPEND_LOCK`` (so passes take
    turns) and notifies the watchers once when it moved anything.
    """
    moved = 0
    while True:
        cursor = conn.execute(_PUBLISH_SQL)
        count = None
        while count is None:
            if cursor.description is not None and len(cursor.description) == 2:
                count = cursor.fetchone()[0]
            elif not cursor.nextset():
                raise RuntimeError("the publishing pass returned no count")
        moved += count
        if count < _PUBLISH_BATCH:
            return moved


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


def page(after, limit, session_id=None, agent_id=None, task_id=None, types=None, db=None):
    """Return ``(changes, next_position)``: up to ``limit`` matching changes after ``after``.

    A reader sees a prefix of the feed (module docstring), so the newest seq
    read first bounds what the page looked at: when fewer than ``limit``
    match, the page has looked at everything up to it.  Raises
    ``CursorGone`` when retention has removed changes after ``after``: a
    reader that went on would skip them.  ``db``: the database to read
    (default: the bound one).
    """
    horizon, removed = marks(db)
    if after < removed:
        raise CursorGone()
    if horizon <= after:
        return [], after
    type_slots = _type_slots(types)
    rows = _page.rows(
        db,
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
    with _Waiter(POLL, filters) as waiter:
        for found, reached in waiter.follow(through, time.monotonic() + wait, gone, limit):
            through = reached
            if found:
                break
    return found, through


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
    kinds = (changes.MESSAGE_CREATED, changes.SESSION_DELETED)
    filters = {"session_id": session_id, "types": kinds}
    with _Waiter(POLL, filters) as waiter:
        for found, _through in waiter.follow(start, time.monotonic() + wait, gone):
            if any(c["type"] == changes.SESSION_DELETED for c in found):
                raise SessionNotFound(session_id)
            if found:
                rows = read_page()
                if rows:
                    break
    return rows


class Follower:
    """A stream's source: the matching changes after a position, as they are committed.

    Made before the response starts, so a bad position (410, 422) or a full
    house (503) is answered at once.  Iterating yields each change, and the
    position read up to (an int) when ``heartbeat`` seconds passed without
    one, until ``max_seconds``; it ends early when the changes it would send
    next were removed by retention, or when it fell ``backlog`` changes
    behind: the client resumes from the last change it got.
    """

    def __init__(self, cursor, heartbeat, max_seconds, name="cursor", gone=None, **filters):
        with connected():
            self.after = position(cursor, name)
        self.heartbeat = heartbeat
        self.end = time.monotonic() + max_seconds
        self.gone = gone
        self.waiter = _Waiter(STREAM, filters)

    def __iter__(self):
        batches = self.waiter.follow(
            self.after, self.end, self.gone, _STREAM_BATCH, idle=self.heartbeat
        )
        try:
            for found, through in batches:
                self.after = through
                yield from found if found else (through,)
        except CursorGone:
            # Retention removed what comes next: end here, so that the
            # client's reconnect (from its Last-Event-ID) gets the 410.
            logger.info("Ended a stream at %d: the changes after it were removed", self.after)
        except OperationalError as exc:
            logger.warning("Ended a stream at %d: the feed cannot be read (%s)", self.after, exc)

    def close(self):
        """Give the waiting slot back."""
        self.waiter.close()


_STREAM_BATCH = 1000
POLL, STREAM = "poll", "stream"


def _never():
    return False


class _Waiter:
    """A waiting slot at this process's hub, and the one loop that follows the feed with it.

    ``with _Waiter(kind, filters) as waiter`` gives the slot back at the end.
    """

    def __init__(self, kind, filters):
        config = current_app.config
        self.filters = filters
        # A stream is read after its request has ended: keep the request's scope.
        self.scope = scoping.current()
        self.hub = _hub()
        try:
            self.subscription = self.hub.subscribe(
                matcher(**filters), config["FEED_WAITERS_MAX"], kind, config["STREAM_BACKLOG_MAX"]
            )
        except waiting.Full:
            raise WaitingFull(kind) from None

    def follow(self, after, until, gone=None, limit=_STREAM_BATCH, idle=None):
        """Yield ``(changes, through)``: batches of matching changes after ``after``, as they come.

        A batch holds at most ``limit`` changes.

        Each batch continues where the one before it ended, and ``through``
        is past every change looked at.  With ``idle``, an empty batch comes
        after each ``idle`` seconds without a change.  When ``until`` (a
        ``time.monotonic()``) passes or the client has ``gone``, a last
        batch hands over what the hub has given meanwhile: the position a
        caller ends at never lies past a change it did not return.  Raises
        ``CursorGone`` when catching up finds the changes after ``after``
        removed.
        """
        gone = gone or _never
        subscription, following = self.subscription, False
        quiet_until = time.monotonic() + idle if idle else until
        while True:
            now = time.monotonic()
            if now >= until or gone():
                yield (subscription.take(limit) if following else ([], after))
                return
            if not following:
                following = subscription.follow(after)
                if not following:
                    # The hub is past ``after``: read what it has handed out.
                    with self.hub.readers.connection_context(), scoping.using(self.scope):
                        found, after = page(after, limit, db=self.hub.readers, **self.filters)
                    if found:
                        yield found, after
                        quiet_until = time.monotonic() + idle if idle else until
                    continue
            timeout = min(quiet_until, until) - now
            subscription.wait(max(0, min(timeout, waiting.CLIENT_CHECK_INTERVAL)))
            found, after = subscription.take(limit)
            if found or time.monotonic() >= quiet_until:
                yield found, after
                quiet_until = time.monotonic() + idle if idle else until
            if subscription.overflowed and not subscription.pending:
                logger.info("A waiter fell more than its backlog behind: ended it at %d", after)
                return

    def close(self):
        """Give the slot back."""
        self.subscription.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _hub():
    return waiting.hub(after, newest, publish)


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
    # Offered later, by the watcher's thread: the scope is the caller's, now.
    scope = scoping.current()

    def match(change):
        if kinds is not None and change["type"] not in kinds:
            return False
        if scope is not None and not scope.allows(change["agent_id"]):
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
    query = scoping.restrict(query, Change.agent_id)  # tombstones carry their agent too
    return query.order_by(Change.seq).limit(limit)


_page = Prepared(_page_query)
# The watcher's read of every change, handed to the waiters' matchers (scoped there).
_after = Prepared(
    lambda after, limit: (
        Change.select().where(Change.seq > after).order_by(Change.seq).limit(limit)
    ),
    unscoped=True,
)


# -- retention ----------------------------------------------------------------


def count_older_than(cutoff_us):
    """Return how many changes ``remove_older_than(cutoff_us)`` would remove now."""
    with database.connection_context():
        query = Change.select().where(Change.at < cutoff_us)
        first_kept = _first_kept(cutoff_us)
        if first_kept is not None:
            query = query.where(Change.seq < first_kept)
        return query.count()


def _first_kept(cutoff_us):
    """Return the lowest seq recorded at or after ``cutoff_us``, None if there is none."""
    row = (
        Change.select(Change.seq)
        .where(Change.at >= cutoff_us)
        .order_by(Change.seq)
        .limit(1)
        .tuples()
        .first()
    )
    return row[0] if row else None


def remove_older_than(cutoff_us, batch=1000, rest=None):
    """Delete the changes recorded before ``cutoff_us``, oldest seq first; return how many.

    A change's ``at`` is read before its writer's turn to append, so a later
    seq may hold an earlier ``at``: removal goes in seq order and stops at the
    first change it keeps, so no kept change ever lies below the mark (which
    would make it unreachable, and a cursor before it a 410).  Each batch of
    ``batch`` is one transaction, which also raises the mark; ``rest(took)``,
    if given, is called after each full batch with the seconds it took (prune
    pauses there, so that the service's writers get their turns).
    """
    removed, through = 0, 0
    with database.connection_context():
        while True:
            started = time.monotonic()
            with database.atomic():
                rows = (
                    Change.select(Change.seq, Change.at)
                    .where(Change.seq > through)
                    .order_by(Change.seq)
                    .limit(batch)
                    .tuples()
                )
                seqs = []
                for seq, at in rows:
                    if at >= cutoff_us:
                        break
                    seqs.append(seq)
                if seqs:
                    Change.delete().where(
                        (Change.seq > through) & (Change.seq <= seqs[-1])
                    ).execute()
                    _raise_mark(seqs[-1])
            removed += len(seqs)
            if len(seqs) < batch:
                break
            through = seqs[-1]
            if rest is not None:
                rest(time.monotonic() - started)
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
