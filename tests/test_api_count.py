"""GET /api/sessions/count: the list's filters, a total and all five statuses."""

import pytest
from problems import BAD_TEXT, assert_problem, invalid

STATUSES = ("created", "active", "paused", "completed", "failed")


@pytest.fixture
def fleet(api):
    """Fourteen sessions over two agents, two tasks and every status."""
    sessions = []
    for n in range(14):
        session = api.create(agent_id="ab"[n % 2], task_id="tu"[n % 3 == 0])
        status = STATUSES[n % 5]
        if status != "created":
            session = api.patch(session["id"], status=status)
        sessions.append(session)
    return sessions


def listed(api, **filters):
    """Every session the list returns for ``filters``, following next_cursor."""
    found, cursor = [], None
    while True:
        page = api.list(limit=3, **filters, **({"cursor": cursor} if cursor else {}))
        found += page["sessions"]
        cursor = page["next_cursor"]
        if cursor is None:
            return found


def count(client, expect=200, **filters):
    response = client.get("/api/sessions/count", query_string=filters)
    assert response.status_code == expect, response.get_json()
    return response.get_json()


def test_an_empty_service_counts_zero_in_every_status(client):
    assert count(client) == {"count": 0, "by_status": dict.fromkeys(STATUSES, 0)}


def test_counts_by_status(client, fleet):
    assert count(client) == {
        "count": 14,
        "by_status": {"created": 3, "active": 3, "paused": 3, "completed": 3, "failed": 2},
    }


def filter_sets(fleet):
    middle = sorted(s["created_at"] for s in fleet)[6]
    late = sorted(s["last_active"] for s in fleet)[9]
    return [
        {},
        {"agent_id": "a"},
        {"agent_id": "nobody"},
        {"task_id": "u"},
        {"status": "failed"},
        {"status": "active,paused"},
        {"agent_id": "b", "status": "completed,failed,created"},
        {"agent_id": "a", "task_id": "t", "status": "active"},
        {"created_after": middle},
        {"created_before": middle, "agent_id": "b"},
        {"active_before": late, "status": "active,completed"},
        {"active_after": late, "created_before": middle},
        {"created_after": "2100-01-01T00:00:00Z"},
    ]


def test_counts_equal_a_full_listing(api, client, fleet):
    for filters in filter_sets(fleet):
        sessions = listed(api, **filters)
        expected = {status: 0 for status in STATUSES}
        for session in sessions:
            expected[session["status"]] += 1
        assert count(client, **filters) == {"count": len(sessions), "by_status": expected}, filters


def test_failed_today_per_agent(api, client, fleet):
    today = fleet[0]["created_at"][:10] + "T00:00:00Z"
    per_agent = {
        agent: count(client, agent_id=agent, status="failed", created_after=today)["count"]
        for agent in "ab"
    }
    assert per_agent == {
        agent: sum(1 for s in fleet if s["agent_id"] == agent and s["status"] == "failed")
        for agent in "ab"
    }


def test_a_deleted_session_is_no_longer_counted(api, client, fleet):
    api.delete(fleet[1]["id"])
    assert count(client)["count"] == 13
    assert count(client)["by_status"]["active"] == 2


@pytest.mark.parametrize(
    ("query", "errors"),
    [
        ("cursor=abc", {"cursor": ["Unknown field."]}),
        ("limit=10", {"limit": ["Unknown field."]}),
        ("sort=last_active", {"sort": ["Unknown field."]}),
        ("order=asc", {"order": ["Unknown field."]}),
        ("status=done", {"status": [
            "Must be one or more of created, active, paused, completed, failed, "
            "separated by commas; 'done' is not one."
        ]}),
        ("agent_id=", {"agent_id": ["Length must be between 1 and 255."]}),
        ("task_id=a%00", {"task_id": [BAD_TEXT]}),
        ("agent_id=a&agent_id=b", {"agent_id": ["Given more than once."]}),
        ("created_after=today", {"created_after": [
            "Must be an RFC 3339 date-time with Z or an offset, such as 2024-01-16T10:00:00Z."
        ]}),
    ],
)  # fmt: skip
def test_bad_query_is_422(client, query, errors):
    assert_problem(client.get(f"/api/sessions/count?{query}"), invalid(**errors))


def test_count_is_one_query(client, fleet, count_queries):
    with count_queries() as counted:
        count(client, agent_id="a", status="active,paused", created_after="2000-01-01T00:00:00Z")
    assert len(counted) == 1
