"""GET /api/sessions/<id>: the full session, 404s, and reads that change nothing."""

import pytest
from problems import FULL_KEYS, NOT_FOUND_PATH, SEED_FULL_KEYS, assert_problem, invalid, problem

UNKNOWN = "session-0000000000000000000000000000"


def test_get_returns_what_create_returned(api):
    created = api.create(task_id="task-xyz", prompt="Start", data={"workdir": "/w"})
    assert api.get(created["id"]) == created


def test_get_has_every_seed_key_after_messages(api):
    session = api.create(data={"workdir": "/path/to/project", "model": "claude-3-sonnet"})
    api.send(session["id"])
    fetched = api.get(session["id"])
    assert set(fetched) == FULL_KEYS
    assert set(fetched) >= SEED_FULL_KEYS
    assert fetched["status"] == "active"
    assert fetched["message_count"] == 1


def test_reads_leave_last_active_alone(api):
    session = api.create()
    api.list()
    api.messages(session["id"])
    assert api.get(session["id"]) == session
    assert api.get(session["id"]) == session


def test_unknown_session_is_404(client):
    assert_problem(
        client.get(f"/api/sessions/{UNKNOWN}"), problem(404, f"No session has the id '{UNKNOWN}'.")
    )


def test_deleted_session_is_404(api, client):
    session_id = api.create()["id"]
    api.delete(session_id)
    assert_problem(
        client.get(f"/api/sessions/{session_id}"),
        problem(404, f"No session has the id '{session_id}'."),
    )


@pytest.mark.parametrize(
    "path",
    [
        "/api/sessions/abc",
        "/api/sessions/session-",
        "/api/sessions/SESSION-0000000000000000000000000000",
        "/api/sessions/session-0000000000000000000000000000/",
        "/api/sessions/session-0000000000000000000000000000/other",
        "/api/sessions/%00",
        "/api/session",
        "/api",
        "/",
    ],
)
def test_malformed_ids_and_unknown_paths_are_404(client, path):
    assert_problem(client.get(path), problem(404, NOT_FOUND_PATH))


def test_unknown_query_parameter_is_422(api, client):
    session_id = api.create()["id"]
    assert_problem(
        client.get(f"/api/sessions/{session_id}?verbose=1"), invalid(verbose=["Unknown field."])
    )
