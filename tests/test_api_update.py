"""PATCH /api/sessions/<id>: status moves, merge patch of data, prompt, last_active."""

import json

import pytest
from contract import ALLOWED, RFC7396_APPENDIX_A, STATUSES
from problems import BAD_TEXT, assert_problem, invalid, parse_time, problem

UNKNOWN = "session-0000000000000000000000000000"


def session_in(api, status, **body):
    session = api.create(**body)
    if status != "created":
        session = api.patch(session["id"], status=status)
    assert session["status"] == status
    return session


def patch_raw(client, session_id, body):
    # json.dumps escapes lone surrogates as \ud800, as a client would send them.
    return client.patch(
        f"/api/sessions/{session_id}", data=json.dumps(body), content_type="application/json"
    )


@pytest.mark.parametrize("new", STATUSES)
@pytest.mark.parametrize("current", STATUSES)
def test_status_transition_table(api, client, current, new):
    before = session_in(api, current, data={"k": "v"})
    if new == current:
        assert api.patch(before["id"], status=new) == before
    elif new in ALLOWED[current]:
        after = api.patch(before["id"], status=new)
        assert after["status"] == new
        assert parse_time(after["last_active"]) > parse_time(before["last_active"])
        # The statement that moves the status stamps both with the same instant.
        assert after["status_changed_at"] == after["last_active"]
        moved = ("status", "last_active", "status_changed_at", "version")
        unchanged = {k: v for k, v in after.items() if k not in moved}
        assert unchanged == {k: v for k, v in before.items() if k not in moved}
        assert after["version"] == before["version"] + 1
    else:
        response = client.patch(f"/api/sessions/{before['id']}", json={"status": new})
        assert_problem(
            response, problem(409, f"The session is {current} and cannot move to {new}.")
        )
    expected = before if new == current or new not in ALLOWED[current] else after
    assert api.get(before["id"]) == expected


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_refused_move_changes_nothing_else_in_the_body(api, client, status):
    before = session_in(api, status, data={"k": "v"}, prompt="p")
    response = client.patch(
        f"/api/sessions/{before['id']}",
        json={"status": "active", "data": {"k": "new"}, "prompt": "new"},
    )
    assert_problem(response, problem(409, f"The session is {status} and cannot move to active."))
    assert api.get(before["id"]) == before


@pytest.mark.parametrize("status", STATUSES)
def test_data_and_prompt_change_in_any_status(api, status):
    before = session_in(api, status)
    after = api.patch(before["id"], data={"notes": "Paused for review"}, prompt="again")
    assert after["data"] == {"notes": "Paused for review"}
    assert after["prompt"] == "again"
    assert after["status"] == status


# RFC 7396 appendix A, the cases whose target and patch are both objects
# (data is always an object), and a few more of our own.
RFC7396_EXAMPLES = [
    *(
        (target, patch, result)
        for target, patch, result in RFC7396_APPENDIX_A
        if isinstance(target, dict) and isinstance(patch, dict)
    ),
    (
        {"a": {"b": {"c": 1, "d": 2}}, "x": 1},
        {"a": {"b": {"c": 3}}},
        {"a": {"b": {"c": 3, "d": 2}}, "x": 1},
    ),
    ({"a": [1, 2, 3]}, {"a": [4]}, {"a": [4]}),
    ({"a": {"b": 1}}, {"a": "flat"}, {"a": "flat"}),
    ({"a": "flat"}, {"a": {"b": 1}}, {"a": {"b": 1}}),
    ({"a": "flat"}, {"a": {"b": None}}, {"a": {}}),
    ({"a": 1}, {"missing": None}, {"a": 1}),
    (
        {"workdir": "/w"},
        {"notes": "Paused for review"},
        {"workdir": "/w", "notes": "Paused for review"},
    ),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC7396_EXAMPLES)
def test_data_is_merge_patched(api, target, patch, result):
    session = api.create(data=target)
    assert api.patch(session["id"], data=patch)["data"] == result
    assert api.get(session["id"])["data"] == result


@pytest.mark.parametrize(
    ("before", "after"),
    [(None, "set"), ("old", "new"), ("old", None), ("old", ""), ("old", " old ")],
)
def test_prompt_is_set_replaced_or_cleared(api, before, after):
    session = api.create(prompt=before)
    assert api.patch(session["id"], prompt=after)["prompt"] == after
    assert api.get(session["id"])["prompt"] == after


def test_empty_patch_is_200_and_changes_nothing(api):
    before = api.create(data={"a": 1}, prompt="p")
    assert api.patch(before["id"]) == before
    assert api.get(before["id"]) == before


@pytest.mark.parametrize(
    "patch",
    [
        {},
        {"status": "created"},
        {"data": {}},
        {"data": {"a": 1}},
        {"data": {"missing": None}},
        {"data": {"nested": {"b": [1, 2]}}},
        {"data": {"nested": {}}},
        {"prompt": "p"},
        {"status": "created", "data": {"a": 1}, "prompt": "p"},
    ],
)
def test_patch_equal_to_the_stored_state_leaves_last_active_alone(api, patch):
    before = api.create(data={"a": 1, "nested": {"b": [1, 2]}}, prompt="p")
    assert api.patch(before["id"], **patch) == before
    assert api.get(before["id"]) == before


@pytest.mark.parametrize(
    ("stored", "patch"),
    [
        ({"a": 1}, {"a": 1.0}),
        ({"a": 1.0}, {"a": 1}),
        ({"a": 1}, {"a": True}),
        ({"a": True}, {"a": 1}),
        ({"a": 0}, {"a": False}),
        ({"a": "1"}, {"a": 1}),
        ({"a": [1]}, {"a": [1.0]}),
        ({"a": {}}, {"a": {"b": 1}}),
        ({"a": 1}, {"a": None}),
        ({"a": None}, {"a": None}),
    ],
)
def test_a_changed_value_moves_last_active(api, stored, patch):
    before = api.create(data=stored)
    after = api.patch(before["id"], data=patch)
    assert parse_time(after["last_active"]) > parse_time(before["last_active"])
    assert json.dumps(after["data"]) != json.dumps(stored)


def test_prompt_change_moves_last_active(api):
    before = api.create(prompt="p")
    for prompt in (None, "", "q"):
        after = api.patch(before["id"], prompt=prompt)
        assert parse_time(after["last_active"]) > parse_time(before["last_active"])
        before = after


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"agent_id": "other"}, {"agent_id": ["Unknown field."]}),
        ({"task_id": "other"}, {"task_id": ["Unknown field."]}),
        ({"id": UNKNOWN}, {"id": ["Unknown field."]}),
        ({"message_count": 9}, {"message_count": ["Unknown field."]}),
        ({"created_at": "2024-01-16T10:00:00Z"}, {"created_at": ["Unknown field."]}),
        ({"last_active": "2024-01-16T10:00:00Z"}, {"last_active": ["Unknown field."]}),
        ({"Status": "active"}, {"Status": ["Unknown field."]}),
        (
            {"status": "Active"},
            {"status": ["Must be one of: created, active, paused, completed, failed."]},
        ),
        (
            {"status": "done"},
            {"status": ["Must be one of: created, active, paused, completed, failed."]},
        ),
        ({"status": None}, {"status": ["Field may not be null."]}),
        ({"status": 1}, {"status": ["Not a valid string."]}),
        ({"data": None}, {"data": ["Field may not be null."]}),
        ({"data": []}, {"data": ["Not a valid mapping type."]}),
        ({"data": "x"}, {"data": ["Not a valid mapping type."]}),
        ({"data": 1}, {"data": ["Not a valid mapping type."]}),
        ({"data": {"k": "a\x00"}}, {"data": [f"At /k: {BAD_TEXT}"]}),
        ({"data": {"a\ud800": 1}}, {"data": [f"A key in /: {BAD_TEXT}"]}),
        ({"data": {"n": 2**64}}, {"data": ["At /n: integers must fit in 64 bits."]}),
        ({"prompt": 1}, {"prompt": ["Not a valid string."]}),
        ({"prompt": "a\x00"}, {"prompt": [BAD_TEXT]}),
        ({"prompt": "\ud800"}, {"prompt": [BAD_TEXT]}),
        (
            {"status": "done", "data": None, "prompt": 1, "agent_id": "x"},
            {
                "status": ["Must be one of: created, active, paused, completed, failed."],
                "data": ["Field may not be null."],
                "prompt": ["Not a valid string."],
                "agent_id": ["Unknown field."],
            },
        ),
        ({"status": "active", "data": {"k": 1}, "task_id": "t"}, {"task_id": ["Unknown field."]}),
    ],
)
def test_bad_patches_are_422_and_change_nothing(api, client, body, errors):
    before = api.create(data={"k": "v"}, prompt="p")
    assert_problem(patch_raw(client, before["id"], body), invalid(**errors))
    assert api.get(before["id"]) == before


def test_unknown_session_is_404(client):
    assert_problem(
        client.patch(f"/api/sessions/{UNKNOWN}", json={"status": "active"}),
        problem(404, f"No session has the id '{UNKNOWN}'."),
    )


def test_unknown_query_parameter_is_422_and_changes_nothing(api, client):
    before = api.create()
    response = client.patch(f"/api/sessions/{before['id']}?dry_run=1", json={"status": "active"})
    assert_problem(response, invalid(dry_run=["Unknown field."]))
    assert api.get(before["id"]) == before
