"""fields: storable text, storable JSON, query integers and comma lists."""

import json

import pytest
from marshmallow import Schema, ValidationError

from sessions_app import fields
from sessions_app.fields import BAD_TEXT, json_problem


def nested(levels):
    """Return ``levels`` objects nested inside each other."""
    value = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("text", "storable"),
    [
        ("", True),
        ("plain ascii", True),
        ("  spaces\t\r\n", True),
        ("Ünïcødé 🤖 エージェント", True),
        ("\U0001f916", True),
        ("\ufffd\uffff", True),
        ("\x00", False),
        ("a\x00", False),
        ("\ud800", False),
        ("\udfff", False),
        ("a\udc80b", False),
        ("\ud83d\ude00", False),
    ],
)
def test_is_storable_text(text, storable):
    assert fields.is_storable_text(text) is storable


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"a": [1, 2.5, "x", None, True, False, {}, []]},
        {"max": 2**63 - 1, "min": -(2**63)},
        {"tiny": 5e-324, "big": 1.7976931348623157e308},
        {"ключ": {"🤖": ["значение"]}},
        nested(fields.MAX_JSON_DEPTH),
        [[[]]],
        "text",
        None,
    ],
)
def test_storable_json(value):
    assert json_problem(value) is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (nested(fields.MAX_JSON_DEPTH + 1), "Nested more than 100 levels deep."),
        ({"a": [[]], "b": nested(101)}, "Nested more than 100 levels deep."),
        (json.loads("[" * 101 + "]" * 101), "Nested more than 100 levels deep."),
        ({"n": 2**63}, "At /n: integers must fit in 64 bits."),
        ({"n": -(2**63) - 1}, "At /n: integers must fit in 64 bits."),
        ({"a": [0, {"n": 10**30}]}, "At /a/1/n: integers must fit in 64 bits."),
        ({"x": float("inf")}, "At /x: numbers must be finite."),
        ({"x": float("-inf")}, "At /x: numbers must be finite."),
        ({"x": [float("nan")]}, "At /x/0: numbers must be finite."),
        ({"s": "a\x00"}, f"At /s: {BAD_TEXT}"),
        ({"s": ["ok", "\ud800"]}, f"At /s/1: {BAD_TEXT}"),
        ({"\x00": 1}, f"A key in /: {BAD_TEXT}"),
        ({"k": {"\udfff": 1}}, f"A key in /k: {BAD_TEXT}"),
        ({"k": [{"a\x00b": None}]}, f"A key in /k/0: {BAD_TEXT}"),
        ("\x00", f"At : {BAD_TEXT}"),
    ],
)
def test_unstorable_json(value, problem):
    assert json_problem(value) == problem


def test_booleans_are_not_checked_as_integers():
    assert json_problem({"t": True, "f": False}) is None


class Probe(Schema):
    text = fields.Text()
    data = fields.JSONObject()
    limit = fields.QueryInt()
    status = fields.CommaList(["a", "b", "c"])
    name = fields.Text(validate=fields.NotBlank())
    at = fields.Timestamp()


@pytest.mark.parametrize(
    ("given", "loaded"),
    [
        ({"text": " as sent \n"}, {"text": " as sent \n"}),
        ({"data": {"k": [1]}}, {"data": {"k": [1]}}),
        ({"limit": "42"}, {"limit": 42}),
        ({"limit": "007"}, {"limit": 7}),
        ({"limit": "9" * 18}, {"limit": int("9" * 18)}),
        ({"status": "b"}, {"status": ("b",)}),
        ({"status": "c,a,c"}, {"status": ("c", "a")}),
        ({"name": " x "}, {"name": " x "}),
    ],
)
def test_fields_load(given, loaded):
    assert Probe().load(given) == loaded


@pytest.mark.parametrize(
    ("given", "errors"),
    [
        ({"text": "a\x00"}, {"text": [BAD_TEXT]}),
        ({"text": "\ud800"}, {"text": [BAD_TEXT]}),
        ({"text": 1}, {"text": ["Not a valid string."]}),
        ({"data": []}, {"data": ["Not a valid mapping type."]}),
        ({"data": {"n": 2**64}}, {"data": ["At /n: integers must fit in 64 bits."]}),
        ({"limit": ""}, {"limit": ["Not a valid integer."]}),
        ({"limit": "+5"}, {"limit": ["Not a valid integer."]}),
        ({"limit": "-5"}, {"limit": ["Not a valid integer."]}),
        ({"limit": "1.0"}, {"limit": ["Not a valid integer."]}),
        ({"limit": " 5"}, {"limit": ["Not a valid integer."]}),
        ({"limit": "1e3"}, {"limit": ["Not a valid integer."]}),
        ({"limit": "\u0661"}, {"limit": ["Not a valid integer."]}),
        ({"limit": "9" * 19}, {"limit": ["Not a valid integer."]}),
        (
            {"status": ""},
            {"status": ["Must be one or more of a, b, c, separated by commas; '' is not one."]},
        ),
        (
            {"status": "a,B"},
            {"status": ["Must be one or more of a, b, c, separated by commas; 'B' is not one."]},
        ),
        (
            {"status": "a, b"},
            {"status": ["Must be one or more of a, b, c, separated by commas; ' b' is not one."]},
        ),
        ({"name": " \t\n"}, {"name": ["Must contain a non-whitespace character."]}),
        ({"name": ""}, {"name": ["Must contain a non-whitespace character."]}),
    ],
)
def test_fields_refuse(given, errors):
    with pytest.raises(ValidationError) as raised:
        Probe().load(given)
    assert raised.value.messages == errors


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, None),
        (0, "1970-01-01T00:00:00.000000Z"),
        (1_705_399_200_000_000, "2024-01-16T10:00:00.000000Z"),
    ],
)
def test_timestamp_dumps_rfc3339(value, text):
    assert Probe().dump({"at": value}) == {"at": text}
