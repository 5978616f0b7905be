"""POST /api/sessions/bulk (contract section 11), on each database."""

from collections import Counter

import pytest
from problems import INVALID

from sessions_app import bulk, create_app, db, migrations

URL = "/api/sessions/bulk"


def post(client, body, expect=200, **headers):
    response = client.post(URL, json=body, headers=headers)
    assert response.status_code == expect, response.get_json()
    return response.get_json()


def changes(client):
    return client.get("/api/changes", query_string={"limit": 1000}).get_json()["changes"]


def test_a_status_by_filter_is_set_as_each_patch_would(api, client):
    mine = [api.create(agent_id="x") for _ in range(3)]
    api.patch(mine[1]["id"], status="active")
    other = api.create(agent_id="y")
    before = {s["id"]: api.get(s["id"]) for s in mine}
    seen = len(changes(client))
    answer = post(client, {"filter": {"agent_id": "x"}, "set": {"status": "failed"}})
    assert answer == {
        "matched": 3,
        "changed": 3,
        "skipped": {"conflict": 0},
        "remaining": 0,
        "dry_run": False,
    }
    for session in mine:
        now = api.get(session["id"])
        was = before[session["id"]]
        assert now["status"] == "failed"
        assert now["version"] == was["version"] + 1
        assert now["status_changed_at"] == now["last_active"] > was["last_active"]
        assert {**now, "status": was["status"]} == {
            **was,
            "version": now["version"],
            "last_active": now["last_active"],
            "status_changed_at": now["status_changed_at"],
        }
    assert api.get(other["id"])["status"] == "created"
    feed = changes(client)[seen:]
    assert sorted(c["session_id"] for c in feed) == sorted(s["id"] for s in mine)
    for change in feed:
        assert change["type"] == "session.updated"
        assert change["changed"] == ["status"]
        assert change["status"] == "failed"
        assert change["version"] == api.get(change["session_id"])["version"]


def test_oldest_first_up_to_the_limit_until_nothing_remains(api, client):
    sessions = [api.create(agent_id="x") for _ in range(5)]
    api.patch(sessions[0]["id"], status="completed")  # final: never matched by a move
    body = {"filter": {"agent_id": "x"}, "set": {"status": "paused"}, "limit": 2}
    first = post(client, body)
    assert (first["matched"], first["changed"], first["remaining"]) == (2, 2, 2)
    assert [api.get(s["id"])["status"] for s in sessions] == [
        "completed",
        "paused",
        "paused",
        "created",
        "created",
    ]
    second = post(client, body)
    assert (second["matched"], second["changed"], second["remaining"]) == (2, 2, 0)
    assert post(client, body)["matched"] == 0


def test_a_dry_run_changes_nothing_and_tells_what_would_happen(api, client):
    sessions = [api.create(agent_id="x") for _ in range(4)]
    api.patch(sessions[0]["id"], status="active")
    api.patch(sessions[1]["id"], status="failed")
    before = [api.get(s["id"]) for s in sessions]
    seen = len(changes(client))
    body = {"filter": {"all": True}, "set": {"status": "completed"}, "dry_run": True, "limit": 2}
    assert post(client, body) == {
        "matched": 2,
        "changed": 0,
        "skipped": {"conflict": 0},
        "remaining": 1,
        "dry_run": True,
        "by_status": {"created": 0, "active": 1, "paused": 0, "completed": 0, "failed": 0}
        | {"created": 1},
    }
    assert [api.get(s["id"]) for s in sessions] == before
    assert len(changes(client)) == seen
    deleting = post(client, {"filter": {"all": True}, "delete": True, "dry_run": True})
    assert deleting["matched"] == 4
    assert deleting["by_status"] == {
        "created": 2,
        "active": 1,
        "paused": 0,
        "completed": 0,
        "failed": 1,
    }


def test_a_delete_by_filter_leaves_each_sessions_tombstone(api, client):
    doomed = [api.create(agent_id="x", data={"pr": 42}) for _ in range(2)]
    api.send(doomed[0]["id"])
    kept = api.create(agent_id="x", data={"pr": 7})
    seen = len(changes(client))
    answer = post(client, {"filter": {"data": {"pr": 42}}, "delete": True})
    assert (answer["matched"], answer["changed"], answer["remaining"]) == (2, 2, 0)
    for session in doomed:
        api.get(session["id"], expect=404)
        api.messages(session["id"], expect=404)
    api.get(kept["id"])
    tombstones = changes(client)[seen:]
    assert [(c["type"], c["reason"]) for c in tombstones] == [("session.deleted", "deleted")] * 2
    last = {c["session_id"]: (c["status"], c["version"]) for c in tombstones}
    assert last == {doomed[0]["id"]: ("active", 2), doomed[1]["id"]: ("created", 1)}


def test_each_batch_is_its_own_transaction_of_at_most_100(api, client):
    for _ in range(250):
        api.create(agent_id="x")
    seen = len(changes(client))
    answer = post(client, {"filter": {"agent_id": "x"}, "set": {"status": "active"}})
    assert answer["changed"] == 250
    # Every change of a transaction is stamped with that transaction's moment.
    batches = Counter(c["at"] for c in changes(client)[seen:])
    assert sorted(batches.values()) == [50, 100, 100]


def run_with_pause(app, body_filters, pause, **change):
    with app.app_context():
        return bulk.apply(body_filters, pause=pause, **change)


def test_a_move_forbidden_by_the_time_of_the_write_is_skipped_as_a_conflict(app, api):
    sessions = [api.create(agent_id="x") for _ in range(3)]

    def meanwhile():
        api.patch(sessions[1]["id"], status="completed")

    answer = run_with_pause(app, {"agent_id": "x"}, meanwhile, status="paused")
    assert (answer["matched"], answer["changed"], answer["skipped"]) == (3, 2, {"conflict": 1})
    assert [api.get(s["id"])["status"] for s in sessions] == ["paused", "completed", "paused"]
    assert api.get(sessions[1]["id"])["version"] == 2  # the PATCH's, not the bulk's


def test_a_session_that_stopped_matching_meanwhile_is_left_alone(app, api):
    sessions = [api.create(agent_id="x") for _ in range(2)]
    quiet_before = api.get(sessions[1]["id"])["last_active"]

    def meanwhile():
        api.send(sessions[0]["id"])  # active now, no longer quiet

    answer = run_with_pause(
        app, {"agent_id": "x", "active_before": _us(quiet_before)}, meanwhile, status="failed"
    )
    assert (answer["matched"], answer["changed"], answer["skipped"]) == (2, 1, {"conflict": 0})
    assert [api.get(s["id"])["status"] for s in sessions] == ["active", "failed"]


def _us(timestamp):
    from sessions_app.timefmt import parse_rfc3339_us

    return parse_rfc3339_us(timestamp)


def test_an_idempotency_key_replays_the_first_answer(api, client):
    for _ in range(3):
        api.create(agent_id="x")
    body = {"filter": {"agent_id": "x"}, "set": {"status": "failed"}, "limit": 2}
    first = client.post(URL, json=body, headers={"Idempotency-Key": "bulk-1"})
    assert first.status_code == 200
    seen = len(changes(client))
    again = client.post(URL, json=body, headers={"Idempotency-Key": "bulk-1"})
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json() == again.get_json() | {"changed": 2}
    assert len(changes(client)) == seen
    assert client.get("/api/sessions/count?status=failed").get_json()["count"] == 2
    other = client.post(
        URL, json={**body, "limit": 3}, headers={"Idempotency-Key": "bulk-1"}
    ).get_json()
    assert list(other["errors"]) == ["Idempotency-Key"]


def test_a_failed_bulk_change_stores_no_answer_for_its_key(api, client):
    api.create(agent_id="x")
    body = {"filter": {"agent_id": "x"}, "set": {"status": "failed"}, "dry_run": True}
    refused = client.post(URL, json={**body, "limit": 0}, headers={"Idempotency-Key": "k"})
    assert refused.status_code == 422
    answer = client.post(URL, json=body, headers={"Idempotency-Key": "k"})
    assert answer.status_code == 200 and "Idempotent-Replayed" not in answer.headers


def test_a_read_only_token_may_not_change_in_bulk(tmp_path):
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": f"sqlite:///{tmp_path}/s.sqlite3",
            "SESSIONS_API_TOKENS": "rw-token",
            "SESSIONS_API_READONLY_TOKENS": "ro-token",
        }
    )
    migrations.upgrade()
    try:
        client = app.test_client()
        body = {"filter": {"all": True}, "delete": True, "dry_run": True}
        refused = client.post(URL, json=body, headers={"Authorization": "Bearer ro-token"})
        assert refused.status_code == 403
        allowed = client.post(URL, json=body, headers={"Authorization": "Bearer rw-token"})
        assert allowed.status_code == 200
    finally:
        db.database.close_all()


EMPTY = 'Give at least one filter, or {"all": true} for every session.'
TRUE_ONLY = "Must be true (or leave it out)."
ONE_CHANGE = "Give exactly one of set and delete."
LIMIT = "Must be greater than or equal to 1 and less than or equal to 10000."
STATUSES = "Must be one of created, active, paused, completed, failed, or a non-empty list of them."
ONE_STATUS = "Must be one of: created, active, paused, completed, failed."
RFC3339 = "Must be an RFC 3339 date-time with Z or an offset, such as 2024-01-16T10:00:00Z."


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"filter": {}, "delete": True}, {"filter": [EMPTY]}),
        ({"filter": {"all": False}, "delete": True}, {"filter": {"all": [TRUE_ONLY]}}),
        ({"filter": {"all": 1}, "delete": True}, {"filter": {"all": ["Not a valid boolean."]}}),
        ({"delete": True}, {"filter": ["Missing data for required field."]}),
        ({"filter": {"all": True}}, {"set": [ONE_CHANGE]}),
        (
            {"filter": {"all": True}, "delete": True, "set": {"status": "failed"}},
            {"set": [ONE_CHANGE]},
        ),
        ({"filter": {"all": True}, "delete": False}, {"delete": [TRUE_ONLY]}),
        ({"filter": {"all": True}, "set": {"status": "Failed"}}, {"set": {"status": [ONE_STATUS]}}),
        (
            {"filter": {"all": True}, "set": {"status": "failed", "data": {}}},
            {"set": {"data": ["Unknown field."]}},
        ),
        (
            {"filter": {"all": True}, "set": {}},
            {"set": {"status": ["Missing data for required field."]}},
        ),
        ({"filter": {"all": True}, "delete": True, "limit": 0}, {"limit": [LIMIT]}),
        ({"filter": {"all": True}, "delete": True, "limit": 10_001}, {"limit": [LIMIT]}),
        (
            {"filter": {"all": True}, "delete": True, "limit": "5"},
            {"limit": ["Not a valid integer."]},
        ),
        (
            {"filter": {"all": True}, "delete": True, "dry_run": "yes"},
            {"dry_run": ["Not a valid boolean."]},
        ),
        ({"filter": {"all": True}, "delete": True, "force": True}, {"force": ["Unknown field."]}),
        ({"filter": {"agent": "x"}, "delete": True}, {"filter": {"agent": ["Unknown field."]}}),
        ({"filter": {"status": []}, "delete": True}, {"filter": {"status": [STATUSES]}}),
        (
            {"filter": {"status": "active,paused"}, "delete": True},
            {"filter": {"status": [STATUSES]}},
        ),
        (
            {"filter": {"data": '{"pr": 42}'}, "delete": True},
            {"filter": {"data": ['Must be a JSON object, such as {"pr": 42}.']}},
        ),
        (
            {"filter": {"active_before": "yesterday"}, "delete": True},
            {"filter": {"active_before": [RFC3339]}},
        ),
    ],
)
def test_a_bad_bulk_body_is_a_422_naming_each_field(client, api, body, errors):
    api.create(agent_id="x")
    problem = post(client, body, expect=422)
    assert problem["detail"] == INVALID
    assert problem["errors"] == errors
    assert api.list(agent_id="x")["sessions"][0]["status"] == "created"


def test_statuses_as_a_list_and_time_windows_filter_too(api, client):
    old = [api.create(agent_id="x") for _ in range(3)]
    api.patch(old[0]["id"], status="active")
    api.patch(old[1]["id"], status="paused")
    cut = api.get(old[2]["id"])["created_at"]
    api.create(agent_id="x")
    body = {
        "filter": {"status": ["active", "paused", "created"], "created_before": cut},
        "set": {"status": "completed"},
    }
    assert post(client, body)["changed"] == 3
    assert client.get("/api/sessions/count?status=completed").get_json()["count"] == 3
