"""PostgreSQL: ``change_queue``, where a write's change waits for its seq (``feed.py``).

A write appends its change here, without the lock every write took before;
a publishing pass moves the committed ones into ``changes`` in queue order.
The columns are those of ``changes`` with ``id`` (a bigserial: the queue's
order) in place of ``seq``.  Releases before this one append to ``changes``
directly under the lock the passes take, so a fleet half upgraded keeps one
order.  SQLite's writers commit one at a time and take their seq at once:
no queue there.
"""

from peewee import PostgresqlDatabase


def up(migrator, db):
    if not isinstance(db, PostgresqlDatabase):
        return
    db.execute_sql(
        "CREATE TABLE change_queue ("
        " id BIGSERIAL PRIMARY KEY,"
        " type VARCHAR(24) NOT NULL,"
        " session_id VARCHAR(40) NOT NULL,"
        " agent_id VARCHAR(255) NOT NULL,"
        " task_id VARCHAR(255),"
        " status VARCHAR(16) NOT NULL,"
        " version INTEGER NOT NULL,"
        " at BIGINT NOT NULL,"
        " message_id VARCHAR(40),"
        " role VARCHAR(16),"
        " changed VARCHAR(64),"
        " reason VARCHAR(16))"
    )
