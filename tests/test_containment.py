"""Data filters: SQLite's answer is PostgreSQL's ``jsonb @>``, on the very same texts.

The table holds the rules that are easy to get wrong, with PostgreSQL's
answers (checked against PostgreSQL itself when TEST_DATABASE_URL is set);
the property test compares SQLite's condition (its JSON checks and the
exact function) with PostgreSQL's own ``@>`` on generated documents and
filters, most of them made from the document so that many match.
"""

import json
import os
from decimal import Decimal

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peewee import Model, SqliteDatabase, TextField

from sessions_app import containment, jsonio
from sessions_app.containment import DataFilter

# (document, filter, contains?) as PostgreSQL answers.
CASES = [
    ({"pr": 42}, {"pr": 42}, True),
    ({"pr": 42}, {"pr": 42.0}, True),
    ({"pr": 42.0}, {"pr": 42}, True),
    ({"pr": 42}, {"pr": "42"}, False),
    ({"pr": "42"}, {"pr": 42}, False),
    ({"pr": 1}, {"pr": True}, False),
    ({"pr": True}, {"pr": 1}, False),
    ({"pr": 0}, {"pr": False}, False),
    ({"pr": None}, {"pr": None}, True),
    ({}, {"pr": None}, False),
    ({"pr": 0}, {"pr": None}, False),
    ({"a": 1, "b": 2}, {}, True),
    ({"a": 1}, {"a": 1, "b": 2}, False),
    ({"labels": ["a", "b"]}, {"labels": ["b"]}, True),
    ({"labels": ["a", "b"]}, {"labels": ["b", "a", "b"]}, True),
    ({"labels": ["a"]}, {"labels": []}, True),
    ({"labels": []}, {"labels": []}, True),
    ({"labels": ["a"]}, {"labels": "a"}, False),  # a bare scalar is in an array only at the top
    ({"labels": "a"}, {"labels": ["a"]}, False),
    ({"labels": [["a", "b"]]}, {"labels": [["b"]]}, True),
    ({"labels": [["a", "b"]]}, {"labels": ["a"]}, False),
    ({"labels": ["a"]}, {"labels": [["a"]]}, False),
    ({"labels": [{"k": 1, "j": 2}]}, {"labels": [{"k": 1}]}, True),
    ({"labels": [{"k": 1}]}, {"labels": [[]]}, False),
    ({"labels": [[]]}, {"labels": [{}]}, False),
    ({"a": {"b": {"c": 1, "d": 2}}}, {"a": {"b": {"c": 1}}}, True),
    ({"a": {"b": {"c": 1}}}, {"a": {"b": {}}}, True),
    ({"a": {"b": []}}, {"a": {"b": {}}}, False),
    ({"a": {"b": 1}}, {"a": {}}, True),
    ({"a": []}, {"a": {}}, False),
    ({"a": {}}, {"a": []}, False),
    ({"a": "x"}, {"a": {}}, False),
    ({"a": '{"b": 1}'}, {"a": {"b": 1}}, False),
    ({"a": {"b": 1}}, {"a": '{"b":1}'}, False),
    ({"a": 1e300}, {"a": 1e300}, True),
    # Numbers compare as the decimals their text writes, not as doubles: the
    # double 1.2345678901234566e+17 is 123456789012345664 exactly.
    ({"a": 1.2345678901234566e17}, {"a": 123456789012345660}, True),
    ({"a": 123456789012345660}, {"a": 1.2345678901234566e17}, True),
    ({"a": 123456789012345664}, {"a": 1.2345678901234566e17}, False),
    ({"a": 5e-324}, {"a": 5e-324}, True),
    ({"a": 5e-324}, {"a": 0}, False),
    ({"a": -0.0}, {"a": 0}, True),
    ({"a": 0.1}, {"a": 0.1}, True),
    ({"a": 9007199254740993}, {"a": 9007199254740992.0}, False),
    ({"a.b": 1}, {"a.b": 1}, True),
    ({"a": {"b": 1}}, {"a.b": 1}, False),
    ({'q"k': 1}, {'q"k': 1}, True),
    ({"": "é😀\n\t\x01'"}, {"": "é😀\n\t\x01'"}, True),
    ({"s": "é"}, {"s": "e\u0301"}, False),  # no Unicode normalisation
    ({"s": "A"}, {"s": "a"}, False),
]


@pytest.fixture(scope="module")
def sqlite():
    """An in-memory SQLite with the function, and a table of JSON texts stored as data is."""
    db = SqliteDatabase(":memory:")
    containment.install(db)

    class Doc(Model):
        data = TextField()

        class Meta:
            database = db

    db.create_tables([Doc])
    yield db, Doc
    db.close()


def sqlite_contains(sqlite, document, wanted, text=None):
    """SQLite's answer on ``document`` stored as the service writes it (or as ``text``)."""
    db, doc = sqlite
    with db.atomic() as transaction:
        doc.create(data=jsonio.dumps(document).decode() if text is None else text)
        condition = containment.condition(doc.data, DataFilter(wanted), db)
        found = doc.select().where(condition).count()
        transaction.rollback()
    return bool(found)


@pytest.fixture(scope="module")
def postgresql():
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        pytest.skip("needs PostgreSQL (TEST_DATABASE_URL)")
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


def postgresql_contains(conn, document, wanted, text=None):
    # The texts both databases see: data as stored, the filter as written.
    texts = (jsonio.dumps(document).decode() if text is None else text, DataFilter(wanted).text)
    return conn.execute("SELECT %s::jsonb @> %s::jsonb", texts).fetchone()[0]


def case_id(case):
    return f"{jsonio.dumps(case[0]).decode()}@>{jsonio.dumps(case[1]).decode()}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_sqlite_answers_as_jsonb_does(sqlite, case):
    document, wanted, expected = case
    assert sqlite_contains(sqlite, document, wanted) is expected


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_the_table_is_what_postgresql_answers(postgresql, case):
    document, wanted, expected = case
    assert postgresql_contains(postgresql, document, wanted) is expected


# Documents spelled otherwise than the service writes them: escapes,
# exponents, trailing zeros, spaces.  SQLite's JSON checks read values as
# JSON does, so none of these may hide a match (the keys they look up by
# path are written as the service writes them: without escapes).
# (document text, filter, contains?) as PostgreSQL answers.
SPELLED = [
    ('{"repo": "\\u0072epo-7"}', {"repo": "repo-7"}, True),
    ('{"repo": "repo\\/7"}', {"repo": "repo/7"}, True),
    ('{"s": "\\u00e9"}', {"s": "é"}, True),
    ('{"s": "\\ud83d\\ude00"}', {"s": "😀"}, True),
    ('{"labels": ["c\\u0069"]}', {"labels": ["ci"]}, True),
    ('{"repo": "repo-70"}', {"repo": "repo-7"}, False),
    ('{"pr": 4.242e3}', {"pr": 4242}, True),
    ('{"pr": 4242E+0}', {"pr": 4242}, True),
    ('{"pr": 42420e-1}', {"pr": 4242}, True),
    ('{"pr": 0.4242e4}', {"pr": 4242.0}, True),
    ('{"pr": 4242.000}', {"pr": 4242}, True),
    ('{"pr": -4242.0}', {"pr": -4242}, True),
    ('{"pr": 14242}', {"pr": 4242}, False),
    ('{"pr": 4242}', {"pr": 4242.5}, False),
    ('{"n": 0.10}', {"n": 0.1}, True),
    ('{"n": 1e-1}', {"n": 0.1}, True),
    ('{"n": 1E300}', {"n": 1e300}, True),
    ('{"n": -0}', {"n": 0}, True),
    ('{"n": 0.0}', {"n": -0.0}, True),
    ('{ "a" : { "b" : [ 1 , "x" ] } }', {"a": {"b": ["x", 1.0]}}, True),
    ('{"a": {"b": [10, "xy"]}}', {"a": {"b": ["x", 1]}}, False),
    ('{"a": "\\"", "b": 1}', {"a": '"'}, True),
]


def spelled_id(case):
    return f"{case[0]}@>{jsonio.dumps(case[1]).decode()}"


@pytest.mark.parametrize("case", SPELLED, ids=[spelled_id(c) for c in SPELLED])
def test_sqlite_answers_as_jsonb_does_on_other_spellings(sqlite, case):
    text, wanted, expected = case
    assert sqlite_contains(sqlite, None, wanted, text=text) is expected


@pytest.mark.parametrize("case", SPELLED, ids=[spelled_id(c) for c in SPELLED])
def test_the_spellings_table_is_what_postgresql_answers(postgresql, case):
    text, wanted, expected = case
    assert postgresql_contains(postgresql, None, wanted, text=text) is expected


# -- the property -------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "", "a.b", 'q"k', "é", "😀", " s", "$"])
TEXT = st.text(alphabet=st.sampled_from("ab é😀\n\x01'\"\\"), max_size=4)
NUMBERS = st.one_of(
    st.integers(-3, 3),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [1.0, 0.1, -0.0, 1e300, 5e-324, 1.2345678901234566e17, 123456789012345660, 2.0**53]
    ),
)
# Look-alikes often: 1, 1.0, true and "1" are three different values to jsonb.
LOOKALIKES = st.sampled_from([0, 1, 1.0, True, False, None, "1", "", "true", "null"])
SCALARS = st.one_of(LOOKALIKES, st.none(), st.booleans(), NUMBERS, TEXT)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=12,
)
OBJECTS = st.dictionaries(KEYS, VALUES, max_size=5)


@st.composite
def part_of(draw, value):
    """Draw a value that ``value`` often contains, and sometimes nearly does.

    Parts are kept, numbers retyped, elements repeated and reordered; now
    and then a value changes shape (an array's element in place of the
    array, an object wrapped in an array, an empty object for an array).
    """
    twist = draw(st.integers(0, 11))
    if isinstance(value, dict):
        keys = draw(st.lists(st.sampled_from(sorted(value)), unique=True)) if value else []
        part = {key: draw(part_of(value[key])) for key in keys}
        if twist == 0:
            part[draw(KEYS)] = draw(VALUES)  # a key it may not have
        return [part] if twist == 1 else part
    if isinstance(value, list):
        if twist == 0 and value:
            return draw(part_of(draw(st.sampled_from(value))))
        if twist == 1:
            return {}
        items = draw(st.lists(st.sampled_from(value), max_size=4)) if value else []
        return [draw(part_of(item)) for item in items]
    if twist == 0:
        return draw(SCALARS)
    if twist == 1:
        return [value]
    if isinstance(value, bool) or value is None:
        return int(value or 0) if twist == 2 else value
    if twist == 2 and value in (0, 1):
        return bool(value)  # 1 is not true
    if isinstance(value, int) and abs(value) < 2**53 and draw(st.booleans()):
        return float(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value) if draw(st.booleans()) else value
    return value


@st.composite
def documents_and_filters(draw):
    document = draw(OBJECTS)
    wanted = draw(st.one_of(part_of(document), OBJECTS))
    if not isinstance(wanted, dict):  # a filter is always an object
        wanted = {"a": wanted}
    return document, wanted


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents_and_filters())
def test_sqlite_matches_postgresql_on_generated_documents(sqlite, postgresql, pair):
    document, wanted = pair
    if containment.depth(wanted) > containment.MAX_DEPTH:
        return
    expected = postgresql_contains(postgresql, document, wanted)
    assert sqlite_contains(sqlite, document, wanted) is expected
    # The exact function alone, without the JSON checks SQLite runs first.
    texts = (jsonio.dumps(document).decode(), DataFilter(wanted).text)
    assert containment.contains_text(*texts) == expected


@st.composite
def spelled(draw, value):
    """Draw a JSON text of ``value`` (numbers as Decimal) as another writer might spell it.

    Keys are written as the service writes them: SQLite's JSON checks look
    a key up by its path, which finds a key only as written, unescaped.
    """
    space = draw(st.sampled_from(["", " ", "\n  "]))
    if isinstance(value, dict):
        items = [
            f"{jsonio.dumps(key).decode()}{space}:{space}{draw(spelled(item))}"
            for key, item in value.items()
        ]
        return "{" + space + f",{space}".join(items) + space + "}"
    if isinstance(value, list):
        return "[" + space + f",{space}".join(draw(spelled(item)) for item in value) + space + "]"
    if isinstance(value, str):
        chars = []
        for char in value:
            must = char in '"\\' or char < " "
            if must or draw(st.integers(0, 3)) == 0:
                code = char.encode("utf-16-be")
                units = [int.from_bytes(code[i : i + 2], "big") for i in range(0, len(code), 2)]
                chars.append("".join(f"\\u{unit:04x}" for unit in units))
            else:
                chars.append(char)
        return '"' + "".join(chars) + '"'
    if isinstance(value, Decimal):
        positional = format(value, "f")
        return draw(
            st.sampled_from(
                [
                    positional,
                    positional + (".000" if "." not in positional else "00"),
                    format(value, "e"),
                    format(value, "E"),
                    format(value.scaleb(1), "f") + "e-1",
                ]
            )
        )
    return jsonio.dumps(value).decode()


@st.composite
def spelled_documents_and_filters(draw):
    document, wanted = draw(documents_and_filters())
    parsed = json.loads(jsonio.dumps(document), parse_float=Decimal, parse_int=Decimal)
    return draw(spelled(parsed)), wanted


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spelled_documents_and_filters())
def test_sqlite_matches_postgresql_on_documents_spelled_otherwise(sqlite, postgresql, pair):
    text, wanted = pair
    if containment.depth(wanted) > containment.MAX_DEPTH:
        return
    expected = postgresql_contains(postgresql, None, wanted, text=text)
    assert sqlite_contains(sqlite, None, wanted, text=text) is expected
