"""Recording: each write's change appended in its transaction, and published in seq order.

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
pass for the commits its writers announce (``hub.py``), and a writer
answers once its change is published, so a client that wrote then reads
the feed finds its change.  A long transaction elsewhere in the database
delays nothing: a pass waits only for the pass before it.
"""

from functools import partial

import peewee
from peewee import PostgresqlDatabase

from ..db import database
from . import follow, hub

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
    cursor = db.execute_sql(_append_sql(db), [values[name] for name in _COLUMNS])
    # SQLite: the change's seq, which its commit makes the newest (writers
    # commit one at a time).  PostgreSQL: a publishing pass gives it later.
    seq = None if isinstance(db, PostgresqlDatabase) else cursor.lastrowid
    # The waiters are woken once the outermost transaction commits (a keyed
    # request's, say), never before: they would look and find nothing yet.
    database.after_commit(partial(follow.committed, seq))


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
    database.after_commit(follow.committed)


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
    "SELECT count(*), CASE WHEN count(*) > 0 THEN "
    f"pg_notify('{hub.CHANNEL}', max(seq)::text) END "
    "FROM published; COMMIT"
)


def publish(conn):
    """Move the committed changes of ``change_queue`` into the feed, in order; return how many.

    PostgreSQL only; ``conn`` is a psycopg connection in autocommit mode.
    Each batch is one transaction under ``_APPEND_LOCK`` (so passes take
    turns) and notifies the watchers once when it moved anything, with its
    newest seq as the payload: every change up to it is committed then, so
    a watcher with no one to hand changes to moves on without a query.
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
