"""POST /api/sessions: defaults, shapes, formats, stored values and bad bodies."""

import json
from datetime import UTC, datetime

import pytest
from problems import (
    BAD_TEXT,
    FULL_KEYS,
    SEED_FULL_KEYS,
    SESSION_ID,
    TIMESTAMP,
    assert_problem,
    invalid,
    parse_time,
    problem,
)


def test_defaults(api):
    session = api.create(agent_id="CLAUDE_CODE")
    assert session["agent_id"] == "CLAUDE_CODE"
    assert session["status"] == "created"
    assert session["message_count"] == 0
    assert session["data"] == {}
    assert session["task_id"] is None
    assert session["prompt"] is None
    assert session["last_active"] == session["created_at"]


def test_full_shape_keeps_every_seed_key(api):
    session = api.create(task_id="task-xyz", prompt="Initial prompt for the session")
    assert set(session) == FULL_KEYS
    assert set(session) >= SEED_FULL_KEYS
    assert session["task_id"] == "task-xyz"
    assert session["prompt"] == "Initial prompt for the session"


def test_location_names_the_new_session(client):
    response = client.post("/api/sessions", json={"agent_id": "CLAUDE_CODE"})
    assert response.status_code == 201
    assert response.mimetype == "application/json"
    session = response.get_json()
    assert response.headers["Location"] == f"/api/sessions/{session['id']}"
    assert client.get(response.headers["Location"]).get_json() == session


def test_ids_are_prefixed_url_safe_and_distinct(api):
    ids = [api.create()["id"] for _ in range(20)]
    assert all(SESSION_ID(session_id) for session_id in ids), ids
    assert len(set(ids)) == len(ids)


def test_timestamps_are_rfc3339_utc_and_now(api):
    before = datetime.now(UTC).replace(microsecond=0)
    session = api.create()
    after = datetime.now(UTC)
    for name in ("created_at", "last_active"):
        assert TIMESTAMP(session[name]), session[name]
        assert before <= parse_time(session[name]) <= after


@pytest.mark.parametrize(
    "body",
    [
        {"agent_id": "  spaced agent\t"},
        {"agent_id": "Ünïcødé 🤖 エージェント", "task_id": "  task ✓ "},
        {"agent_id": "a" * 255, "task_id": "t" * 255},
        {"agent_id": "x", "task_id": ""},
        {"agent_id": "x", "task_id": None, "prompt": None},
        {"agent_id": "x", "prompt": ""},
        {"agent_id": "x", "prompt": '  line one\r\nline two\n\ttab \\ "quoted" 💬  '},
        {"agent_id": "x", "prompt": "p" * 100_000},
        {"agent_id": "x", "data": {"workdir": "/path/to/project", "model": "claude-3-sonnet"}},
        {"agent_id": "x", "data": {"nested": {"deep": {"list": [1, "two", None, True, {}]}}}},
        {"agent_id": "x", "data": {" key ": " value ", "ключ": "значение", "": "empty key"}},
        {"agent_id": "x", "data": {"none": None, "false": False, "zero": 0, "empty": ""}},
        {"agent_id": "x", "data": {"max": 2**63 - 1, "min": -(2**63)}},
        {"agent_id": "x", "data": {"float": 0.1, "tiny": 5e-324, "big": 1.7976931348623157e308}},
        {"agent_id": "x", "data": {"large": 1e300, "exp": 1e16, "neg": -2.5e-7}},
    ],
)
def test_values_are_stored_exactly_as_sent(api, body):
    created = api.create(**body)
    fetched = api.get(created["id"])
    for name, value in body.items():
        assert created[name] == value
        assert fetched[name] == value
    assert_same_json_types(fetched["data"], body.get("data", {}))


def assert_same_json_types(got, sent):
    # 1, 1.0 and true compare equal in Python but are different JSON values.
    assert json.dumps(got, sort_keys=True) == json.dumps(sent, sort_keys=True)


def test_one_and_one_point_zero_and_true_stay_distinct(api):
    data = {"int": 1, "float": 1.0, "bool": True, "list": [1, 1.0, True, 0, 0.0, False]}
    session = api.get(api.create(data=data)["id"])
    assert_same_json_types(session["data"], data)


def test_escaped_surrogate_pairs_are_one_character(client, api):
    raw = r'{"agent_id": "\ud83e\udd16", "data": {"\ud83d\ude00": "\ud83d\ude00"}}'
    response = client.post("/api/sessions", data=raw, content_type="application/json")
    assert response.status_code == 201
    session = api.get(response.get_json()["id"])
    assert session["agent_id"] == "\U0001f916"
    assert session["data"] == {"\U0001f600": "\U0001f600"}


def test_charset_parameter_is_accepted(client):
    response = client.post(
        "/api/sessions",
        data=json.dumps({"agent_id": "x"}).encode(),
        content_type="application/json; charset=utf-8",
    )
    assert response.status_code == 201


TOO_BIG = "At /n: integers must fit in 64 bits."
TOO_BIG_0 = "At /n/0: integers must fit in 64 bits."
NUL = "a\x00b"
SURROGATE = "a\ud800b"
DEEP = {"a": {}}
_node = DEEP["a"]
for _ in range(100):
    _node["a"] = {}
    _node = _node["a"]


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({}, {"agent_id": ["Missing data for required field."]}),
        ({"agent_id": None}, {"agent_id": ["Field may not be null."]}),
        ({"agent_id": 7}, {"agent_id": ["Not a valid string."]}),
        ({"agent_id": ["x"]}, {"agent_id": ["Not a valid string."]}),
        (
            {"agent_id": ""},
            {
                "agent_id": [
                    "Length must be between 1 and 255.",
                    "Must contain a non-whitespace character.",
                ]
            },
        ),
        ({"agent_id": " \t\n "}, {"agent_id": ["Must contain a non-whitespace character."]}),
        ({"agent_id": "a" * 256}, {"agent_id": ["Length must be between 1 and 255."]}),
        ({"agent_id": NUL}, {"agent_id": [BAD_TEXT]}),
        ({"agent_id": SURROGATE}, {"agent_id": [BAD_TEXT]}),
        ({"agent_id": "x", "task_id": "t" * 256}, {"task_id": ["Longer than maximum length 255."]}),
        ({"agent_id": "x", "task_id": 5}, {"task_id": ["Not a valid string."]}),
        ({"agent_id": "x", "task_id": NUL}, {"task_id": [BAD_TEXT]}),
        ({"agent_id": "x", "task_id": SURROGATE}, {"task_id": [BAD_TEXT]}),
        ({"agent_id": "x", "prompt": 5}, {"prompt": ["Not a valid string."]}),
        ({"agent_id": "x", "prompt": {"text": "hi"}}, {"prompt": ["Not a valid string."]}),
        ({"agent_id": "x", "prompt": NUL}, {"prompt": [BAD_TEXT]}),
        ({"agent_id": "x", "prompt": "\udfff"}, {"prompt": [BAD_TEXT]}),
        ({"agent_id": "x", "data": None}, {"data": ["Field may not be null."]}),
        ({"agent_id": "x", "data": []}, {"data": ["Not a valid mapping type."]}),
        ({"agent_id": "x", "data": "text"}, {"data": ["Not a valid mapping type."]}),
        ({"agent_id": "x", "data": 1}, {"data": ["Not a valid mapping type."]}),
        ({"agent_id": "x", "data": {"k": NUL}}, {"data": [f"At /k: {BAD_TEXT}"]}),
        ({"agent_id": "x", "data": {"k": [SURROGATE]}}, {"data": [f"At /k/0: {BAD_TEXT}"]}),
        ({"agent_id": "x", "data": {NUL: 1}}, {"data": [f"A key in /: {BAD_TEXT}"]}),
        ({"agent_id": "x", "data": {"k": {SURROGATE: 1}}}, {"data": [f"A key in /k: {BAD_TEXT}"]}),
        (
            {"agent_id": "x", "data": {"n": 2**63}},
            {"data": ["At /n: integers must fit in 64 bits."]},
        ),
        (
            {"agent_id": "x", "data": {"n": -(2**63) - 1}},
            {"data": ["At /n: integers must fit in 64 bits."]},
        ),
        ({"agent_id": "x", "data": DEEP}, {"data": ["Nested more than 100 levels deep."]}),
        ({"agent_id": "x", "status": "active"}, {"status": ["Unknown field."]}),
        ({"agent_id": "x", "id": "session-mine"}, {"id": ["Unknown field."]}),
        ({"agent_id": "x", "message_count": 3}, {"message_count": ["Unknown field."]}),
        ({"agent_id": "x", "Agent_ID": "y"}, {"Agent_ID": ["Unknown field."]}),
        ({"agent_id": "x", NUL: 1}, {NUL: ["Unknown field."]}),
        ({"agent_id": "x", SURROGATE: 1}, {"a\\ud800b": ["Unknown field."]}),
        (
            {"agent_id": "", "task_id": 1, "prompt": [], "data": [], "extra": 1},
            {
                "agent_id": [
                    "Length must be between 1 and 255.",
                    "Must contain a non-whitespace character.",
                ],
                "task_id": ["Not a valid string."],
                "prompt": ["Not a valid string."],
                "data": ["Not a valid mapping type."],
                "extra": ["Unknown field."],
            },
        ),
    ],
)
def test_bad_bodies_are_422_naming_every_field(client, api, body, errors):
    raw = json.dumps(body)  # escapes lone surrogates as \\ud800, as a client would
    response = client.post("/api/sessions", data=raw, content_type="application/json")
    assert_problem(response, invalid(**errors))
    assert api.list()["sessions"] == []


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_not_json(client, api, constant):
    raw = '{"agent_id": "x", "data": {"n": ' + constant + "}}"
    response = client.post("/api/sessions", data=raw, content_type="application/json")
    assert_problem(
        response, problem(400, f"The body is not valid JSON: {constant} is not valid JSON.")
    )
    assert api.list()["sessions"] == []


@pytest.mark.parametrize(
    ("raw", "errors"),
    [
        ('{"agent_id": "x", "data": {"n": 1%s}}' % ("0" * 5000), {"data": [TOO_BIG]}),
        ('{"agent_id": "x", "data": {"n": -1%s}}' % ("0" * 5000), {"data": [TOO_BIG]}),
        ('{"agent_id": "x", "data": {"n": [%s]}}' % ("9" * 20), {"data": [TOO_BIG_0]}),
        ('{"agent_id": "x", "data": {"n": -%s}}' % ("9" * 19), {"data": [TOO_BIG]}),
        ('{"agent_id": 1%s}' % ("0" * 5000), {"agent_id": ["Not a valid string."]}),
    ],
)
def test_integers_of_any_length_are_valid_json_but_too_large(client, api, raw, errors):
    response = client.post("/api/sessions", data=raw, content_type="application/json")
    assert_problem(response, invalid(**errors))
    assert api.list()["sessions"] == []


def test_overflowing_float_is_refused(client, api):
    raw = '{"agent_id": "x", "data": {"n": 1e400}}'
    response = client.post("/api/sessions", data=raw, content_type="application/json")
    assert_problem(response, invalid(data=["At /n: numbers must be finite."]))
    assert api.list()["sessions"] == []
