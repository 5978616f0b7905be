"""Queries written with peewee, turned into SQL once per database, run as plain rows.

Generating a query's SQL took most of a short request's time (two thirds of
a GET of one session), yet the SQL and the order of its parameters never
change between requests: only the values do.  A ``Prepared`` query is built
once per database and per set of given values, with a marker standing in for
each value; the SQL is kept with, for each placeholder, the name of the value
that goes there (or the query's own constant).  Later calls only run the SQL.

A request's agent scope (scoping.py) is part of the key: a statement is
generated per scope *shape* (how many exact ids, how many prefixes), with
markers for the scope's values too, which each run passes as parameters.
Generated under a scope, a statement that does not apply it is refused
unless it was declared ``unscoped`` (it touches no session by agent: an
insert after a scoped check, an idempotency key, the watcher's read).
"""

import weakref

from peewee import Alias, CharField, Field, ForeignKeyField, IntegerField, TextField

from . import scoping
from .db import database


class ScopeMissing(RuntimeError):
    """A statement run under a token's scope does not apply it."""


class Prepared:
    """A query built by ``build(**values)``, generated once and run many times.

    ``build`` receives a marker in place of each value that is not None, and
    None for the others.  A value must reach the SQL as a parameter, as it
    is: text and integer fields pass a marker through unchanged (an integer
    field keeps what ``int()`` refuses).  A list is refused: its length
    would change the SQL.  Each column a row returns is turned into Python's
    value by its field (see ``_converters``).
    """

    def __init__(self, build, unscoped=False):
        self.build = build
        self.unscoped = unscoped
        # database -> {shape: (sql, slots, converters)}
        self._compiled = weakref.WeakKeyDictionary()

    def execute(self, db=None, **values):
        """Run the query with ``values`` on ``db`` (default: the bound one); return the cursor."""
        return self._run(db, values)[0]

    def rows(self, db=None, **values):
        """Run the query; return its rows as dicts."""
        cursor, converters = self._run(db, values)
        names = [column[0] for column in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        for name, convert in converters.items():
            for row in rows:
                row[name] = convert(row[name])
        return rows

    def _run(self, db, values):
        scope = scoping.current()
        db, (sql, slots, converters) = self._compile(db, values, scope)
        if scope is not None:
            values = {**values, **scope.parameters()}
        params = [values[name] if name else const for name, const in slots]
        return db.execute_sql(sql, params), converters

    def _compile(self, db, values, scope):
        shape = []
        for name, value in values.items():
            if isinstance(value, list | tuple | set | frozenset | dict):
                raise TypeError(
                    f"{name}: a prepared query takes one value per parameter, "
                    f"not a {type(value).__name__}"
                )
            if value is not None:
                shape.append(name)
        db = database.obj if db is None else db
        compiled = self._compiled.setdefault(db, {})
        key = (tuple(shape), None if scope is None else scope.shape)
        if key not in compiled:
            compiled[key] = self._generate(key[0], scope)
        return db, compiled[key]

    def _generate(self, shape, scope):
        # A NUL never gets past the fields that take text from a client, so
        # no real value can be mistaken for a marker.
        markers = {name: f"\x00{name}\x00" for name in shape}
        if scope is None:
            query = self.build(**markers)
        else:
            marked = scope.marked()
            with scoping.using(marked):
                query = self.build(**markers)
            markers.update(marked.parameters())
        sql, params = query.sql()
        names = {marker: name for name, marker in markers.items()}
        slots = [
            (names[p], None) if isinstance(p, str) and p in names else (None, p) for p in params
        ]
        missing = set(shape) - {name for name, _ in slots}
        if missing:
            raise ValueError(f"values not used as parameters: {', '.join(sorted(missing))}")
        scoped = any(name and name.startswith(scoping.PARAM_PREFIX) for name, _ in slots)
        if scope is not None and not scoped and not self.unscoped:
            raise ScopeMissing(f"a statement run under a token's scope does not apply it: {sql}")
        return sql, slots, _converters(query)


def _converters(query):
    """Map each returned column that needs it to its field's ``python_value``.

    The drivers already return text and integers as Python's: a text or
    integer field that does not change ``python_value`` needs no call per
    row.  Any other field (JSON kept as text, a date, a boolean on SQLite)
    converts what it returns.
    """
    converters = {}
    for node in getattr(query, "_returning", None) or ():
        name, field = (node._alias, node.node) if isinstance(node, Alias) else (None, node)
        if not isinstance(field, Field):
            continue  # an expression: returned as the database gives it
        name = name or field.column_name
        if isinstance(field, ForeignKeyField):
            field = field.rel_field
        plain = isinstance(field, CharField | TextField | IntegerField)
        if not (plain and type(field).python_value is Field.python_value):
            converters[name] = field.python_value
    return converters
