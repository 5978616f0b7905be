"""GET /api/sessions: filters, newest first, keyset pages, and bad queries."""

import pytest
from problems import BAD_TEXT, SUMMARY_KEYS, assert_problem, invalid

STATUS_ERROR = (
    "Must be one or more of created, active, paused, completed, failed, "
    "separated by commas; {!r} is not one."
)
LIMIT_RANGE = "Must be greater than or equal to 1 and less than or equal to 1000."
NOT_ISSUED = "Not a cursor this service issued."


def ids(page):
    return [session["id"] for session in page["sessions"]]


def read_all(api, limit, **filters):
    pages, cursor = [], None
    while True:
        params = dict(filters, limit=limit)
        if cursor is not None:
            params["cursor"] = cursor
        page = api.list(**params)
        pages.append(ids(page))
        cursor = page["next_cursor"]
        if cursor is None:
            return pages


@pytest.fixture
def fleet(api):
    """Nine sessions over two agents, two tasks and every status, oldest first."""
    plan = [
        ("CLAUDE_CODE", "task-1", "created"),
        ("CLAUDE_CODE", "task-1", "active"),
        ("CLAUDE_CODE", "task-2", "paused"),
        ("CLAUDE_CODE", None, "completed"),
        ("OTHER", "task-1", "failed"),
        ("OTHER", "task-2", "active"),
        ("OTHER", None, "created"),
        ("claude_code", "task-1", "active"),
        ("CLAUDE_CODE", "Task-1", "paused"),
    ]
    sessions = []
    for agent_id, task_id, status in plan:
        session = api.create(agent_id=agent_id, task_id=task_id)
        if status != "created":
            session = api.patch(session["id"], status=status)
        sessions.append(session)
    return sessions


def newest_first(sessions, **match):
    return [
        s["id"]
        for s in reversed(sessions)
        if all(s[key] in values for key, values in match.items())
    ]


def test_empty_list(api):
    assert api.list() == {"sessions": [], "next_cursor": None}


def test_summaries_have_the_seed_keys_and_status_changed_at(api, fleet):
    page = api.list()
    assert page["next_cursor"] is None
    for summary, session in zip(page["sessions"], reversed(fleet), strict=True):
        assert set(summary) == SUMMARY_KEYS
        assert summary == {key: session[key] for key in SUMMARY_KEYS}


def test_summaries_follow_messages_and_updates(api):
    first, second = api.create(), api.create()
    for _ in range(3):
        receipt = api.send(first["id"])
    updated = api.patch(second["id"], status="paused")
    page = api.list()["sessions"]
    assert [s["id"] for s in page] == [second["id"], first["id"]]
    assert page[1]["message_count"] == 3
    assert page[1]["status"] == "active"
    assert page[1]["last_active"] == receipt["timestamp"]
    assert page[0]["status"] == "paused"
    assert page[0]["last_active"] == updated["last_active"]
    assert page[0]["created_at"] == second["created_at"]


def test_newest_first(api, fleet):
    assert ids(api.list()) == newest_first(fleet)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"agent_id": "CLAUDE_CODE"}, {"agent_id": {"CLAUDE_CODE"}}),
        ({"agent_id": "claude_code"}, {"agent_id": {"claude_code"}}),
        ({"agent_id": "NOBODY"}, {"agent_id": set()}),
        ({"task_id": "task-1"}, {"task_id": {"task-1"}}),
        ({"task_id": "Task-1"}, {"task_id": {"Task-1"}}),
        ({"status": "active"}, {"status": {"active"}}),
        ({"status": "created"}, {"status": {"created"}}),
        ({"status": "failed"}, {"status": {"failed"}}),
        ({"status": "active,paused"}, {"status": {"active", "paused"}}),
        ({"status": "paused,active"}, {"status": {"active", "paused"}}),
        ({"status": "active,active"}, {"status": {"active"}}),
        (
            {"status": "created,active,paused,completed,failed"},
            {"status": {"created", "active", "paused", "completed", "failed"}},
        ),
        (
            {"agent_id": "CLAUDE_CODE", "status": "active,paused"},
            {"agent_id": {"CLAUDE_CODE"}, "status": {"active", "paused"}},
        ),
        (
            {"agent_id": "OTHER", "task_id": "task-1"},
            {"agent_id": {"OTHER"}, "task_id": {"task-1"}},
        ),
        (
            {"agent_id": "CLAUDE_CODE", "task_id": "task-1", "status": "created"},
            {"agent_id": {"CLAUDE_CODE"}, "task_id": {"task-1"}, "status": {"created"}},
        ),
        (
            {"task_id": "task-2", "status": "completed,failed"},
            {"task_id": {"task-2"}, "status": {"completed", "failed"}},
        ),
    ],
)
def test_filters_match_exactly(api, fleet, params, match):
    assert ids(api.list(**params)) == newest_first(fleet, **match)


@pytest.mark.parametrize(
    ("stored", "others"),
    [
        ("caf\u00e9", ["cafe\u0301", "CAF\u00c9", "cafe"]),
        ("agent", ["agent ", " agent", "Agent", "agen", "agent\t"]),
        ("a%b_c", ["a%", "a_b_c", "axb_c"]),
        ("\U0001f916" * 255, ["\U0001f916" * 254]),
    ],
)
@pytest.mark.parametrize("name", ["agent_id", "task_id"])
def test_filters_match_text_exactly(api, name, stored, others):
    body = {"agent_id": "x", "task_id": "t", name: stored}
    wanted = api.create(**body)["id"]
    for other in others:
        api.create(**{**body, name: other})
    assert ids(api.list(**{name: stored})) == [wanted]


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 9, 10])
@pytest.mark.parametrize(
    "filters", [{}, {"status": "active,paused,created"}, {"agent_id": "CLAUDE_CODE"}]
)
def test_pages_are_full_until_the_last(api, fleet, limit, filters):
    pages = read_all(api, limit, **filters)
    assert all(len(page) == limit for page in pages[:-1])
    assert len(pages[-1]) <= limit
    match = {"status": set(filters["status"].split(","))} if "status" in filters else {}
    if "agent_id" in filters:
        match["agent_id"] = {filters["agent_id"]}
    assert [session_id for page in pages for session_id in page] == newest_first(fleet, **match)


def test_last_page_has_a_null_cursor_even_when_full(api, fleet):
    first = api.list(limit=9)
    assert len(first["sessions"]) == 9
    assert first["next_cursor"] is None


def test_default_limit_is_100(api):
    for _ in range(101):
        api.create()
    page = api.list()
    assert len(page["sessions"]) == 100
    rest = api.list(cursor=page["next_cursor"])
    assert len(rest["sessions"]) == 1
    assert rest["next_cursor"] is None
    assert len(api.list(limit=1000)["sessions"]) == 101


def test_deleted_sessions_leave_the_list(api, fleet):
    api.delete(fleet[0]["id"])
    assert ids(api.list()) == newest_first(fleet[1:])


@pytest.mark.parametrize(
    ("query", "errors"),
    [
        ("limit=0", {"limit": [LIMIT_RANGE]}),
        ("limit=1001", {"limit": [LIMIT_RANGE]}),
        ("limit=abc", {"limit": ["Not a valid integer."]}),
        ("limit=1.0", {"limit": ["Not a valid integer."]}),
        ("limit=+5", {"limit": ["Not a valid integer."]}),
        ("limit=-5", {"limit": ["Not a valid integer."]}),
        ("limit=", {"limit": ["Not a valid integer."]}),
        ("limit=1e2", {"limit": ["Not a valid integer."]}),
        ("limit=%2010", {"limit": ["Not a valid integer."]}),
        ("limit=%D9%A1", {"limit": ["Not a valid integer."]}),
        ("limit=99999999999999999999", {"limit": ["Not a valid integer."]}),
        ("status=Active", {"status": [STATUS_ERROR.format("Active")]}),
        ("status=done", {"status": [STATUS_ERROR.format("done")]}),
        ("status=", {"status": [STATUS_ERROR.format("")]}),
        ("status=active,", {"status": [STATUS_ERROR.format("")]}),
        ("status=active,%20paused", {"status": [STATUS_ERROR.format(" paused")]}),
        ("status=active%00", {"status": [STATUS_ERROR.format("active\x00")]}),
        ("cursor=abc", {"cursor": [NOT_ISSUED]}),
        ("cursor=", {"cursor": [NOT_ISSUED]}),
        ("cursor=session-", {"cursor": [NOT_ISSUED]}),
        ("cursor=session-0000000000000000000000000000x", {"cursor": [NOT_ISSUED]}),
        ("cursor=msg-0000000000000000000000000000", {"cursor": [NOT_ISSUED]}),
        ("cursor=%00", {"cursor": [BAD_TEXT]}),
        ("agent_id=", {"agent_id": ["Length must be between 1 and 255."]}),
        ("agent_id=" + "a" * 256, {"agent_id": ["Length must be between 1 and 255."]}),
        ("agent_id=a%00b", {"agent_id": [BAD_TEXT]}),
        ("task_id=a%00b", {"task_id": [BAD_TEXT]}),
        ("status=active&status=paused", {"status": ["Given more than once."]}),
        ("agent_id=a&agent_id=a", {"agent_id": ["Given more than once."]}),
        ("limit=1&limit=1", {"limit": ["Given more than once."]}),
        ("offset=10", {"offset": ["Unknown field."]}),
        ("page=2", {"page": ["Unknown field."]}),
        ("Status=active", {"Status": ["Unknown field."]}),
        (
            "limit=0&status=x&sort=id&offset=1",
            {
                "limit": [LIMIT_RANGE],
                "status": [STATUS_ERROR.format("x")],
                "sort": ["Must be one of: created_at, last_active."],
                "offset": ["Unknown field."],
            },
        ),
    ],
)
def test_bad_query_is_422(api, client, query, errors):
    api.create()
    assert_problem(client.get(f"/api/sessions?{query}"), invalid(**errors))
