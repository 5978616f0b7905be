"""GET /api/sessions and /count with ``data`` (contract section 10), on each database."""

import json

import pytest
from problems import INVALID

DATA = [
    {"pr": 42, "repo": "api", "labels": ["urgent", "ci"]},
    {"pr": 42.0, "repo": "web"},
    {"pr": "42", "repo": "api"},
    {"pr": 7, "repo": "api", "review": {"by": "ana", "ok": True}},
    {"repo": "api", "labels": [["nested"]], "review": {"by": "ana", "ok": False}},
    {},
]


@pytest.fixture
def made(api):
    """One session per DATA entry, agents alternating; returns them oldest first."""
    sessions = []
    for n, data in enumerate(DATA):
        sessions.append(api.create(agent_id="a" if n % 2 == 0 else "b", data=data))
    api.patch(sessions[0]["id"], status="active")
    return sessions


def ids_of(api, **params):
    found, cursor = [], None
    while True:
        page = api.list(**params, **({"cursor": cursor} if cursor else {}))
        found += [s["id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return found


@pytest.mark.parametrize(
    ("wanted", "indexes"),
    [
        ({"pr": 42}, [0, 1]),
        ({"pr": 42.0}, [0, 1]),
        ({"pr": "42"}, [2]),
        ({"labels": ["ci"]}, [0]),
        ({"labels": ["ci", "urgent", "ci"]}, [0]),
        ({"labels": "ci"}, []),
        ({"labels": [["nested"]]}, [4]),
        ({"labels": ["nested"]}, []),
        ({"review": {"by": "ana"}}, [3, 4]),
        ({"review": {"ok": True}}, [3]),
        ({"review": {"ok": 1}}, []),
        ({"review": {}}, [3, 4]),
        ({"review": []}, []),
        ({"repo": "api", "pr": 7}, [3]),
        ({}, [0, 1, 2, 3, 4, 5]),
        ({"missing": None}, []),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
def test_data_filters_as_jsonb_containment(api, client, made, wanted, indexes):
    expected = [made[i]["id"] for i in reversed(indexes)]  # newest first
    text = json.dumps(wanted)
    assert ids_of(api, data=text, limit=1) == expected
    count = client.get("/api/sessions/count", query_string={"data": text}).get_json()
    assert count["count"] == len(indexes)
    assert sum(count["by_status"].values()) == len(indexes)


def test_the_data_filter_combines_with_every_other_filter_and_sort(api, client, made):
    text = json.dumps({"repo": "api"})
    assert ids_of(api, data=text, agent_id="a") == [made[4]["id"], made[2]["id"], made[0]["id"]]
    assert ids_of(api, data=text, status="active") == [made[0]["id"]]
    assert ids_of(api, data=text, status="created,active", agent_id="b") == [made[3]["id"]]
    after = made[1]["created_at"]
    assert ids_of(api, data=text, created_after=after, order="asc", limit=1) == [
        made[2]["id"],
        made[3]["id"],
        made[4]["id"],
    ]
    by_activity = ids_of(api, data=text, sort="last_active", limit=2)
    assert by_activity[0] == made[0]["id"]  # its PATCH made it the latest active
    assert sorted(by_activity) == sorted(made[i]["id"] for i in (0, 2, 3, 4))
    count = client.get(
        "/api/sessions/count", query_string={"data": text, "agent_id": "a"}
    ).get_json()
    assert count == {
        "count": 3,
        "by_status": {"created": 2, "active": 1, "paused": 0, "completed": 0, "failed": 0},
    }


def test_paging_with_a_data_filter_sees_each_session_once_while_others_come_and_go(api):
    kept = [api.create(data={"pr": 1, "n": n})["id"] for n in range(7)]
    seen, cursor = [], None
    while True:
        params = {"data": '{"pr": 1}', "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.list(**params)
        seen += [s["id"] for s in page["sessions"]]
        api.create(data={"pr": 1, "late": True})
        api.create(data={"pr": 2})
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(kept))


def deep(levels):
    value = 1
    for _ in range(levels - 1):
        value = [value]
    return {"a": value}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("pr=42", "The filter is not valid JSON: Expecting value: line 1 column 1 (char 0)."),
        ("{'pr': 42}", "The filter is not valid JSON"),
        ("[1]", 'Must be a JSON object, such as {"pr": 42}.'),
        ("42", 'Must be a JSON object, such as {"pr": 42}.'),
        ("null", 'Must be a JSON object, such as {"pr": 42}.'),
        ('"{}"', 'Must be a JSON object, such as {"pr": 42}.'),
        (json.dumps(deep(9)), "Nested more than 8 levels deep."),
        (json.dumps({"a": "x" * 4090}), "Must be at most 4096 characters of JSON."),
        ('{"a": NaN}', "The filter is not valid JSON: NaN is not valid JSON."),
        ('{"a": "\\u0000"}', "At /a: Must not contain NUL (U+0000) or unpaired surrogate"),
        ('{"a": 99999999999999999999}', "At /a: integers must fit in 64 bits."),
    ],
)
@pytest.mark.parametrize("path", ["/api/sessions", "/api/sessions/count"])
def test_a_bad_data_filter_is_a_422_naming_data(client, path, value, message):
    response = client.get(path, query_string={"data": value})
    assert response.status_code == 422
    problem = response.get_json()
    assert problem["detail"] == INVALID
    assert list(problem["errors"]) == ["data"]
    assert problem["errors"]["data"][0].startswith(message)


def test_eight_levels_and_4096_characters_are_fine(api):
    api.create(data=deep(8))
    assert len(api.list(data=json.dumps(deep(8)))["sessions"]) == 1
    text = json.dumps({"a": "x" * 4087})
    assert len(text) == 4096
    assert api.list(data=text)["sessions"] == []


def test_numbers_compare_by_value_whatever_their_text(api):
    session = api.create(data={"big": 1e300, "tiny": 5e-324, "int": 10})
    for text in ('{"big": 1e300}', '{"big": 1E+300}', '{"tiny": 5e-324}', '{"int": 1e1}'):
        assert [s["id"] for s in api.list(data=text)["sessions"]] == [session["id"]], text


def test_dollars_percents_quotes_and_backslashes_in_a_filter_are_plain_text(api):
    data = {"$data$": "50% off 'now'", "path": "C:\\new\\$x", "q": '"quoted"'}
    session = api.create(data=data)
    api.create(data={"$data$": "50% off"})
    for key, value in data.items():
        found = api.list(data=json.dumps({key: value}))["sessions"]
        assert [s["id"] for s in found] == [session["id"]], key


def test_a_filter_of_many_keys_is_answered(api, client):
    # Up to the 4,096 characters a filter may have: about 300 keys, each a
    # check of its own on SQLite, all in one flat condition.
    data = {f"k{n}": n for n in range(300)}
    kept = api.create(agent_id="a", data=data)
    api.create(agent_id="a", data={**data, "k299": -1})
    wanted = json.dumps(data, separators=(",", ":"))
    assert len(wanted) <= 4096
    assert ids_of(api, data=wanted) == [kept["id"]]
    assert ids_of(api, data=wanted, agent_id="a") == [kept["id"]]
    count = client.get("/api/sessions/count", query_string={"data": wanted}).get_json()
    assert count["count"] == 1
