"""Queries written with peewee, turned into SQL once per database, run as plain rows.

Generating a query's SQL took most of a short request's time (two thirds of
a GET of one session), yet the SQL and the order of its parameters never
change between requests: only the values do.  A ``Prepared`` query is built
once per database and per set of given values, with a marker standing in for
each value; the SQL is kept with, for each placeholder, the name of the value
that goes there (or the query's own constant).  Later calls only run the SQL.
"""

import weakref

from .db import database


class Prepared:
    """A query built by ``build(**values)``, generated once and run many times.

    ``build`` receives a marker in place of each value that is not None, and
    None for the others.  A value must reach the SQL as a parameter, as it
    is: text and integer fields pass a marker through unchanged (an integer
    field keeps what ``int()`` refuses).  ``convert`` maps a column name to
    the function that turns its stored value into Python's.
    """

    def __init__(self, build, convert=None):
        self.build = build
        self.convert = dict(convert or {})
        self._compiled = weakref.WeakKeyDictionary()  # database -> {shape: (sql, slots)}

    def execute(self, db=None, **values):
        """Run the query with ``values`` on ``db`` (default: the bound one); return the cursor."""
        db = database.obj if db is None else db
        shape = tuple(name for name, value in values.items() if value is not None)
        compiled = self._compiled.setdefault(db, {})
        if shape not in compiled:
            compiled[shape] = self._generate(shape)
        sql, slots = compiled[shape]
        return db.execute_sql(sql, [values[name] if name else const for name, const in slots])

    def rows(self, db=None, **values):
        """Run the query; return its rows as dicts."""
        cursor = self.execute(db, **values)
        names = [column[0] for column in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        for name, convert in self.convert.items():
            for row in rows:
                row[name] = convert(row[name])
        return rows

    def _generate(self, shape):
        # A NUL never gets past the fields that take text from a client, so
        # no real value can be mistaken for a marker.
        markers = {name: f"\x00{name}\x00" for name in shape}
        sql, params = self.build(**markers).sql()
        names = {marker: name for name, marker in markers.items()}
        slots = [
            (names[p], None) if isinstance(p, str) and p in names else (None, p) for p in params
        ]
        missing = set(shape) - {name for name, _ in slots}
        if missing:
            raise ValueError(f"values not used as parameters: {', '.join(sorted(missing))}")
        return sql, slots
