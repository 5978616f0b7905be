"""POST /api/sessions/<id>/message (and /messages): store, count, status, refuse."""

import json

import pytest
from problems import (
    BAD_TEXT,
    MESSAGE_ID,
    RECEIPT_KEYS,
    assert_problem,
    invalid,
    parse_time,
    problem,
)

UNKNOWN = "session-0000000000000000000000000000"
PATHS = ("message", "messages")


def send(client, session_id, body, path="message"):
    return client.post(
        f"/api/sessions/{session_id}/{path}", data=json.dumps(body), content_type="application/json"
    )


@pytest.mark.parametrize("path", PATHS)
def test_receipt_shape(api, client, path):
    session = api.create()
    response = send(client, session["id"], {"content": "Please continue"}, path)
    assert response.status_code == 201
    assert response.mimetype == "application/json"
    receipt = response.get_json()
    assert set(receipt) == RECEIPT_KEYS
    assert MESSAGE_ID(receipt["message_id"]), receipt["message_id"]
    assert receipt["session_id"] == session["id"]
    assert receipt["status"] == "sent"
    assert parse_time(receipt["timestamp"]) >= parse_time(session["created_at"])


def test_message_counts_and_moves_last_active(api):
    session = api.create()
    for count in range(1, 4):
        receipt = api.send(session["id"], f"message {count}")
        after = api.get(session["id"])
        assert after["message_count"] == count
        assert after["last_active"] == receipt["timestamp"]
        assert after["created_at"] == session["created_at"]
    assert len(api.messages(session["id"])["messages"]) == 3


def test_message_ids_are_distinct(api):
    session_id = api.create()["id"]
    ids = {api.send(session_id)["message_id"] for _ in range(10)}
    assert len(ids) == 10


@pytest.mark.parametrize(
    ("before", "after"), [("created", "active"), ("active", "active"), ("paused", "paused")]
)
def test_status_after_a_message(api, before, after):
    session = api.create()
    if before != "created":
        api.patch(session["id"], status=before)
    api.send(session["id"])
    assert api.get(session["id"])["status"] == after


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("status", ["completed", "failed"])
def test_final_session_takes_no_message(api, client, status, path):
    before = api.patch(api.create()["id"], status=status)
    response = send(client, before["id"], {"content": "late"}, path)
    assert_problem(
        response,
        problem(409, f"The session is {status}, and a {status} session takes no messages."),
    )
    assert api.get(before["id"]) == before
    assert api.messages(before["id"])["messages"] == []


@pytest.mark.parametrize("role", ["user", "assistant", "system"])
def test_roles(api, role):
    session_id = api.create()["id"]
    api.send(session_id, "hi", role=role)
    assert api.messages(session_id)["messages"][0]["role"] == role


def test_role_defaults_to_user(api):
    session_id = api.create()["id"]
    api.send(session_id, "hi")
    assert api.messages(session_id)["messages"][0]["role"] == "user"


@pytest.mark.parametrize(
    "content",
    ["x", "  padded  ", "\n\tline one\r\nline two\n", 'Ünïcødé 🤖 \\ "q"', "c" * 100_000],
)
def test_content_is_stored_exactly_as_sent(api, content):
    session_id = api.create()["id"]
    api.send(session_id, content)
    assert api.messages(session_id)["messages"][0]["content"] == content


ROLE_ERROR = "Must be one of: user, assistant, system."


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({}, {"content": ["Missing data for required field."]}),
        ({"content": None}, {"content": ["Field may not be null."]}),
        ({"content": 1}, {"content": ["Not a valid string."]}),
        ({"content": ["x"]}, {"content": ["Not a valid string."]}),
        ({"content": ""}, {"content": ["Must contain a non-whitespace character."]}),
        ({"content": " \t\r\n "}, {"content": ["Must contain a non-whitespace character."]}),
        ({"content": "a\x00b"}, {"content": [BAD_TEXT]}),
        ({"content": "a\ud800b"}, {"content": [BAD_TEXT]}),
        ({"content": "x", "role": "User"}, {"role": [ROLE_ERROR]}),
        ({"content": "x", "role": "tool"}, {"role": [ROLE_ERROR]}),
        ({"content": "x", "role": ""}, {"role": [ROLE_ERROR]}),
        ({"content": "x", "role": None}, {"role": ["Field may not be null."]}),
        ({"content": "x", "role": 1}, {"role": ["Not a valid string."]}),
        ({"content": "x", "role": "a\x00"}, {"role": [ROLE_ERROR]}),
        ({"content": "x", "status": "sent"}, {"status": ["Unknown field."]}),
        ({"content": "x", "timestamp": "2024-01-16T10:00:00Z"}, {"timestamp": ["Unknown field."]}),
        (
            {"role": "robot", "extra": 1},
            {
                "content": ["Missing data for required field."],
                "role": [ROLE_ERROR],
                "extra": ["Unknown field."],
            },
        ),
    ],
)
@pytest.mark.parametrize("path", PATHS)
def test_bad_messages_are_422_and_store_nothing(api, client, body, errors, path):
    before = api.create()
    assert_problem(send(client, before["id"], body, path), invalid(**errors))
    assert api.get(before["id"]) == before
    assert api.messages(before["id"])["messages"] == []


@pytest.mark.parametrize("path", PATHS)
def test_unknown_session_is_404(client, path):
    assert_problem(
        send(client, UNKNOWN, {"content": "x"}, path),
        problem(404, f"No session has the id '{UNKNOWN}'."),
    )


def test_unknown_query_parameter_is_422_and_stores_nothing(api, client):
    before = api.create()
    response = client.post(
        f"/api/sessions/{before['id']}/message?role=system", json={"content": "x"}
    )
    assert_problem(response, invalid(role=["Unknown field."]))
    assert api.get(before["id"]) == before
