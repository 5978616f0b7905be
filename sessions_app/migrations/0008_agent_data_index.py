"""SQLite: the agent's index carries ``data``, so a data filter with an agent reads no row.

``(agent_id, id)`` becomes ``(agent_id, id, data)``.  A data filter with an
agent scans that agent's range of this index and checks each entry's
``data`` there; SQLite fetches a row from the table only for an entry that
passes, to return its other columns.  Before, each of the agent's sessions
was fetched from the table to read its ``data``: at 100,000 sessions a
filter matching one of an agent's 20,000 read 20,000 rows scattered over the
table.  The index serves every query the old one did (its columns come
first).  It stores each session's ``data`` a second time; a write pays for
it only when ``data`` is written (a create, a PATCH of ``data``).

PostgreSQL keeps ``(agent_id, id)``: its GIN index (``0006_data_filter``)
serves data filters, and a B-tree entry there has a size limit ``data``
could pass.

The index is built in place, in the upgrade's transaction: writes to
``sessions`` wait while it reads the table once (README.rst, Upgrading).
"""

from peewee import PostgresqlDatabase

OLD = "session_agent_id_id"
NEW = "session_agent_id_id_data"


def up(migrator, db):
    if isinstance(db, PostgresqlDatabase):
        return
    db.execute_sql(f'CREATE INDEX "{NEW}" ON "sessions" ("agent_id", "id", "data")')
    db.execute_sql(f'DROP INDEX "{OLD}"')
