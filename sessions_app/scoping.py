"""The agents the current request may reach: its token's scope, applied by storage.

``auth`` sets the scope of each request from its token (None: every agent)
and resets it when the request ends.  Storage reads it here, never from
Flask: ``models._filtered`` and each statement by id add ``condition`` to
their WHERE, and the change feed's page and matcher do the same, so no
endpoint built on them can forget it.  A prepared statement (prepared.py)
is generated with markers in place of the scope's values and cached per
``shape``; the values are parameters, never part of the SQL.

An agent matches an exact id, or a prefix (``team-a-*``).  On PostgreSQL a
prefix is ``agent_id LIKE 'team-a-%'`` (``%``, ``_`` and ``\\`` escaped):
exact whatever the collation, and its planner estimates how many rows match
from the column's statistics, so a scoped list still reads the index in
order (with ``substr`` it guessed 0.5 %, sorted the whole table, and a list
cost a third more).  On SQLite LIKE ignores case, so a prefix is
``substr(agent_id, 1, len) = prefix``.
"""

from contextlib import contextmanager
from contextvars import ContextVar

from peewee import PostgresqlDatabase, fn

from .db import database
from .storage_errors import AgentOutOfScope

_current = ContextVar("sessions_app.scope", default=None)

#: Names of the scope's parameters in a prepared statement: PREFIX + e0, p0, n0, ...
PARAM_PREFIX = "\x00scope."


class Scope:
    """Agents by exact id and by prefix; ``allows`` and ``condition`` agree on every id."""

    def __init__(self, exact=(), prefixes=(), lengths=None, patterns=None):
        self.exact = tuple(exact)
        self.prefixes = tuple(prefixes)
        self.lengths = tuple(len(p) for p in self.prefixes) if lengths is None else lengths
        self.patterns = tuple(_like(p) for p in self.prefixes) if patterns is None else patterns
        self._exact = frozenset(self.exact)
        #: What a prepared statement's SQL depends on: how many of each.
        self.shape = (len(self.exact), len(self.prefixes))
        self._parameters = self._name_parameters()

    @classmethod
    def of(cls, agents):
        """Return the scope of ``agents``: exact ids, and prefixes ending in ``*``."""
        agents = sorted(set(agents))
        return cls(
            [a for a in agents if not a.endswith("*")],
            [a[:-1] for a in agents if a.endswith("*")],
        )

    def allows(self, agent_id):
        """Tell whether ``agent_id`` is one of this scope's agents."""
        return agent_id in self._exact or any(agent_id.startswith(p) for p in self.prefixes)

    def condition(self, field):
        """Return the SQL condition on ``field`` (an ``agent_id`` column) that ``allows`` states."""
        parts = []
        if self.exact:
            parts.append(field.in_(list(self.exact)))
        if isinstance(database.obj, PostgresqlDatabase):
            parts.extend(field % pattern for pattern in self.patterns)  # LIKE
        else:
            for prefix, length in zip(self.prefixes, self.lengths, strict=True):
                parts.append(fn.SUBSTR(field, 1, length) == prefix)
        condition = parts[0]
        for part in parts[1:]:
            condition = condition | part
        return condition

    def parameters(self):
        """Return the scope's values by parameter name (see ``marked``); do not change it."""
        return self._parameters

    def _name_parameters(self):
        values = {f"{PARAM_PREFIX}e{i}": v for i, v in enumerate(self.exact)}
        for i, (prefix, length, pattern) in enumerate(
            zip(self.prefixes, self.lengths, self.patterns, strict=True)
        ):
            values[f"{PARAM_PREFIX}p{i}"] = prefix
            values[f"{PARAM_PREFIX}n{i}"] = length
            values[f"{PARAM_PREFIX}l{i}"] = pattern
        return values

    def marked(self):
        """Return a scope of the same shape whose every value is its parameter's marker."""
        exact = [f"{PARAM_PREFIX}e{i}\x00" for i in range(len(self.exact))]
        prefixes = [f"{PARAM_PREFIX}p{i}\x00" for i in range(len(self.prefixes))]
        lengths = tuple(f"{PARAM_PREFIX}n{i}\x00" for i in range(len(self.prefixes)))
        patterns = tuple(f"{PARAM_PREFIX}l{i}\x00" for i in range(len(self.prefixes)))
        return Scope(exact, prefixes, lengths, patterns)


def _like(prefix):
    # PostgreSQL's LIKE escapes with a backslash unless told otherwise.
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def current():
    """Return the current request's scope, None when it may reach every agent."""
    return _current.get()


def enter(scope):
    """Make ``scope`` current; return the token that ``leave`` takes."""
    return _current.set(scope)


def leave(token):
    """Restore the scope that was current before ``enter`` returned ``token``."""
    _current.reset(token)


@contextmanager
def using(scope):
    """Run the block with ``scope`` current (a stream's reads, after its request has ended)."""
    token = _current.set(scope)
    try:
        yield
    finally:
        _current.reset(token)


def restrict(query, field):
    """Return ``query`` limited to the current scope's agents on ``field``."""
    scope = _current.get()
    return query if scope is None else query.where(scope.condition(field))


def check_agent(agent_id):
    """Raise ``AgentOutOfScope`` unless the current scope allows ``agent_id``."""
    scope = _current.get()
    if scope is not None and not scope.allows(agent_id):
        raise AgentOutOfScope(agent_id)
