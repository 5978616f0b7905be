"""Finding sessions (contract section 8): ``status_changed_at`` and the indexes of every sort.

- ``sessions.status_changed_at``, when the status last changed.  Rows made
  before it existed get ``created_at`` while they are still ``created`` (their
  status never changed) and ``last_active`` otherwise: the latest moment the
  change can have happened, and the exact one when the move was the
  session's last write, as it usually is for completed and failed sessions.
- ``(last_active, id)`` alone and after ``agent_id``, ``task_id`` and
  ``status``: a list by activity, with any one filter, is one range scan.
  ``(status, last_active, id)`` is also how prune finds expired sessions.
- ``messages`` loses its index on ``session_id``: the primary key
  ``(session_id, seq)`` serves the same look-ups, and every message paid
  for both.

The names are those peewee gives the models' indexes (``session_…``), so a
migrated database and one made from the models are the same.
"""

from peewee import PostgresqlDatabase

INDEXES = (
    ("last_active", "id"),
    ("agent_id", "last_active", "id"),
    ("task_id", "last_active", "id"),
    ("status", "last_active", "id"),
)


def up(migrator, db):
    if isinstance(db, PostgresqlDatabase):
        db.execute_sql("ALTER TABLE sessions ADD COLUMN status_changed_at BIGINT")
    else:
        # SQLite adds a NOT NULL column only with a default; the rows get
        # their real value just below.
        db.execute_sql(
            "ALTER TABLE sessions ADD COLUMN status_changed_at INTEGER NOT NULL DEFAULT 0"
        )
    db.execute_sql(
        "UPDATE sessions SET status_changed_at ="
        " CASE WHEN status = 'created' THEN created_at ELSE last_active END"
    )
    if isinstance(db, PostgresqlDatabase):
        db.execute_sql("ALTER TABLE sessions ALTER COLUMN status_changed_at SET NOT NULL")
    for columns in INDEXES:
        name = "session_" + "_".join(columns)
        db.execute_sql(f'CREATE INDEX "{name}" ON "sessions" ({", ".join(columns)})')
    db.execute_sql('DROP INDEX "message_session_id"')
