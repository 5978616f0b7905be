"""Finding sessions by their data (contract section 10): a GIN index on ``data`` as jsonb.

PostgreSQL only.  ``data`` stays text (see ``0002_data_text``); the index is
on the expression ``(data::jsonb)`` with ``jsonb_path_ops``, which serves
``@>`` and nothing else, in an index about a third the size of the default
operator class.  A data filter is written as that same expression
(``containment.condition``), so the planner can use it.  Every stored
``data`` casts: it is JSON the service wrote, whose numbers are finite
64-bit floats or integers (jsonb takes 1e300 and 5e-324 as exact numerics).

The index is built in place, in the upgrade's transaction: a plain
``CREATE INDEX`` reads the table once and blocks writes to ``sessions``
(not reads) while it does; README.rst (Upgrading) gives its time at 100,000
sessions.  SQLite has no such index: a data filter there is checked row by
row within the range the other filters give.
"""

from peewee import PostgresqlDatabase

INDEX = "session_data_jsonb"


def up(migrator, db):
    if not isinstance(db, PostgresqlDatabase):
        return
    # A GIN build sorts its entries in memory; the default 64 MB spills.
    db.execute_sql("SET LOCAL maintenance_work_mem = '256MB'")
    db.execute_sql(f'CREATE INDEX "{INDEX}" ON "sessions" USING gin ((data::jsonb) jsonb_path_ops)')
