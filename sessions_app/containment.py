"""Finding sessions by their data: JSON containment as PostgreSQL's ``jsonb @>`` defines it.

PostgreSQL answers with ``data::jsonb @> <filter>::jsonb``, written so that
the expression GIN index of ``0006_data_filter`` serves it.  SQLite answers
with ``json_contains(data, <filter>)``, a function registered on each of its
connections that follows ``JsonbDeepContains`` (PostgreSQL's
``src/backend/utils/adt/jsonb_util.c``) rule for rule:

- an object contains another when each of the other's keys is present with
  a value that contains the other's value;
- an array contains another when each element of the other is contained in
  some element of it (order and repeats do not count); a scalar element
  only in an equal scalar element, an object or array element only in an
  element of the same kind;
- values of different kinds never contain each other (``{"a": [1]}`` does
  not contain ``{"a": 1}``: a bare scalar matches an array only at the top,
  where a filter, always an object, never is);
- scalars are equal when of the same JSON type and value; numbers by value,
  as exact decimals of their JSON text (``1`` = ``1.0`` = ``1e0``).

Both databases compare the same two texts: the stored ``data`` and the
filter as the service writes it (``DataFilter.text``).  Before the exact
function, SQLite checks what its own JSON functions can tell cheaply (a
scalar found at the filter's object path, the kind of a value there): a
condition every match meets, which spares the function most rows.
"""

import json
from decimal import Decimal

from peewee import (
    SQL,
    Cast,
    Expression,
    NodeList,
    PostgresqlDatabase,
    SqliteDatabase,
    Value,
    fn,
)

from . import jsonio

#: How deep a filter may nest, and how long its text may be (contract section 10).
MAX_DEPTH = 8
MAX_LENGTH = 4096
SQLITE_FUNCTION = "json_contains"
#: PostgreSQL's index for data filters (made by 0006_data_filter), and what it indexes.
INDEX = "session_data_jsonb"
INDEXED = SQL("(data::jsonb) jsonb_path_ops")

_decode = json.JSONDecoder(parse_float=Decimal, parse_int=Decimal).decode
# A margin around a number that SQLite's own parsing of either text stays
# well inside (it may differ from a correctly rounded double in a last bit).
_SLACK = 1e-9


class DataFilter:
    """A ``data`` filter: the object as loaded and the JSON text both databases compare."""

    __slots__ = ("value", "text")

    def __init__(self, value):
        self.value = value
        self.text = jsonio.dumps(value).decode()

    def __eq__(self, other):
        return isinstance(other, DataFilter) and other.text == self.text

    def __hash__(self):
        return hash(self.text)

    def __repr__(self):
        return f"DataFilter({self.text})"


def depth(value):
    """Return how many levels of objects and arrays ``value`` nests (0 for a scalar)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            level += 1
            deepest = max(deepest, level)
            stack.extend(
                (item, level) for item in (node.values() if isinstance(node, dict) else node)
            )
    return deepest


def contains(value, wanted):
    """Tell whether the JSON value ``value`` contains ``wanted`` (both parsed, numbers Decimal)."""
    if isinstance(wanted, dict):
        # Keys are unique, so fewer keys cannot hold them all (jsonb's shortcut too).
        if not isinstance(value, dict) or len(value) < len(wanted):
            return False
        return all(key in value and _within(value[key], item) for key, item in wanted.items())
    if isinstance(wanted, list):
        if not isinstance(value, list):
            return False
        return all(any(_within(have, item) for have in value) for item in wanted)
    return _equal_scalars(value, wanted)


def _within(have, item):
    """Tell whether ``have`` holds ``item`` where jsonb compares values of one kind."""
    if isinstance(item, dict | list):
        return type(have) is type(item) and contains(have, item)
    return _equal_scalars(have, item)


def _kind(value):
    if isinstance(value, dict | list):
        return "container"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    return "number"


def _equal_scalars(value, wanted):
    # True == Decimal(1) in Python: the JSON types must agree first.
    return _kind(value) == _kind(wanted) and value == wanted


def contains_text(document, wanted):
    """Tell whether the JSON text ``document`` contains the JSON text ``wanted`` (1 or 0)."""
    if document is None or wanted is None:
        return None
    return int(contains(_decode(document), _decode(wanted)))


def install(db):
    """Give an SQLite database the ``json_contains`` function (a no-op for others)."""
    if isinstance(db, SqliteDatabase):
        db.register_function(contains_text, SQLITE_FUNCTION, 2, deterministic=True)


def condition(column, data_filter, db):
    """Return the condition "``column`` (JSON text) contains ``data_filter``" on ``db``."""
    if isinstance(db, PostgresqlDatabase):
        # The very expression the index is on: CAST(data AS jsonb).
        return Expression(Cast(column, "jsonb"), "@>", SQL(_jsonb_literal(data_filter.text)))
    exact = fn.json_contains(column, Value(data_filter.text)) == 1
    checks = list(_sqlite_checks(column, data_filter.value, "$"))
    if not checks:
        return exact
    # One flat AND, cheap checks first: chained with ``&`` each would nest a
    # level deeper, and SQLite's parser refuses an expression past about a
    # hundred levels (a filter of 50 keys was "parser stack overflow").
    return NodeList([*checks, exact], " AND ", parens=True)


def _jsonb_literal(text):
    """Write JSON ``text`` into the SQL as a constant, not a parameter.

    A parameter lets the driver prepare the statement and PostgreSQL plan it
    once for any filter (a generic plan), guessing that one matches 1% of
    the sessions: it then reads the whole key index in order, 400 ms at
    100,000 sessions, where the GIN index answers in 1 ms.  A constant is
    planned for itself.  ``$`` and ``%`` occur only inside JSON strings,
    where ``\u0024`` and ``\u0025`` mean the same, so the text can neither
    end the dollar quotes nor look like a driver placeholder.
    """
    safe = text.replace("$", "\\u0024").replace("%", "\\u0025")
    return f"$data${safe}$data$::jsonb"


def _sqlite_checks(column, wanted, path):
    """Yield conditions every document containing ``wanted`` (an object) at ``path`` meets."""
    for key, item in wanted.items():
        if not _plain_key(key):
            continue  # not writable as a JSON path: left to the exact function
        at = f'{path}."{key}"'
        if isinstance(item, dict):
            yield fn.json_type(column, at) == "object"
            yield from _sqlite_checks(column, item, at)
        elif isinstance(item, list):
            yield fn.json_type(column, at) == "array"
        elif isinstance(item, str):
            # json_extract gives a string's text (and an object's or array's
            # JSON text, which the exact function then refuses).
            yield fn.json_extract(column, at) == item
        elif item is None or isinstance(item, bool):
            yield fn.json_type(column, at) == {None: "null", True: "true", False: "false"}[item]
        else:
            low, high = _around(item)
            yield fn.json_extract(column, at).between(low, high)


def _plain_key(key):
    return key.isprintable() and '"' not in key and "\\" not in key and key.strip() == key


def _around(number):
    number = float(number)
    margin = abs(number) * _SLACK + 1e-300
    return number - margin, number + margin
