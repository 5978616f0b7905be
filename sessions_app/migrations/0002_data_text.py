"""``sessions.data`` as text on PostgreSQL, where early databases made it jsonb.

jsonb rewrites numbers: a float such as 1e300 is kept as a 301-digit
numeric, which reads back as an integer no JSON encoder of 64-bit integers
can write.  So ``data`` is stored as the JSON text it was written as.  A
jsonb value cast to text is its JSON document, so every value is kept; the
numbers jsonb had widened past 64 bits (only floats could become those: the
API refuses larger integers) are written back as the floats they were.
SQLite stored text from the start; there is nothing to do there.
"""

import json

from peewee import PostgresqlDatabase

_INT64 = range(-(2**63), 2**63)


def _int_or_float(digits):
    number = int(digits)
    return number if number in _INT64 else float(number)


def up(migrator, db):
    if not isinstance(db, PostgresqlDatabase):
        return
    types = {column.name: column.data_type for column in db.get_columns("sessions")}
    if types["data"] not in ("jsonb", "json"):
        return
    db.execute_sql("ALTER TABLE sessions ALTER COLUMN data TYPE text USING data::text")
    widened = db.execute_sql("SELECT id, data FROM sessions WHERE data ~ '[0-9]{20}'")
    for session_id, text in widened.fetchall():
        data = json.loads(text, parse_int=_int_or_float)
        db.execute_sql(
            "UPDATE sessions SET data = %s WHERE id = %s",
            (json.dumps(data, ensure_ascii=False, separators=(",", ":")), session_id),
        )
