"""Following next_cursor returns each item exactly once while the lists change."""

import pytest

STATUSES = ("created", "active", "paused", "completed")
LIMIT = 4

FILTERS = [
    {},
    {"agent_id": "a"},
    {"task_id": "t"},
    {"status": "active"},
    {"agent_id": "a", "status": "paused"},
    {"status": "active,paused"},
    {"agent_id": "b", "status": "created,active,completed"},
]


def filter_id(filters):
    return "&".join(f"{key}={value}" for key, value in filters.items()) or "no-filter"


def make_session(api, agent_id, task_id, status):
    session = api.create(agent_id=agent_id, task_id=task_id)
    if status != "created":
        session = api.patch(session["id"], status=status)
    return session


def matches(session, filters):
    statuses = filters.get("status", ",".join(STATUSES)).split(",")
    return (
        session["agent_id"] == filters.get("agent_id", session["agent_id"])
        and session["task_id"] == filters.get("task_id", session["task_id"])
        and session["status"] in statuses
    )


@pytest.mark.parametrize("filters", FILTERS, ids=filter_id)
def test_session_list_returns_each_session_once_while_others_come_and_go(api, filters):
    existing = [
        make_session(api, "ab"[n % 2], "tu"[n % 3 == 0], STATUSES[n % 4]) for n in range(40)
    ]
    wanted = {s["id"] for s in existing if matches(s, filters)}
    assert len(wanted) > 2 * LIMIT
    like = {
        "agent_id": filters.get("agent_id", "a"),
        "task_id": filters.get("task_id", "t"),
        "status": filters.get("status", "active").split(",")[0],
    }

    seen, created, deleted_unread = [], set(), set()
    page = api.list(limit=LIMIT, **filters)
    while True:
        seen += [s["id"] for s in page["sessions"]]
        if page["next_cursor"] is None:
            break
        assert len(page["sessions"]) == LIMIT
        # Between page reads: new sessions (matching and not), the session
        # the cursor names deleted, and the oldest one not yet read deleted.
        created |= {make_session(api, **like)["id"] for _ in range(2)}
        make_session(api, "other", "other", "failed")
        api.delete(seen[-1])
        unread = sorted(wanted - set(seen) - deleted_unread)
        if unread:
            api.delete(unread[0])
            deleted_unread.add(unread[0])
        page = api.list(limit=LIMIT, cursor=page["next_cursor"], **filters)

    assert len(seen) == len(set(seen)), "a session came twice"
    assert seen == sorted(seen, reverse=True), "not newest first"
    assert set(seen) == wanted - deleted_unread
    assert not set(seen) & created
    assert deleted_unread, "the test must delete sessions before they are reached"


def test_message_list_returns_each_message_once_while_messages_arrive(api):
    session = api.create()
    other = api.create()
    sent = [api.send(session["id"], f"first {n}")["message_id"] for n in range(13)]

    listed = []
    page = api.messages(session["id"], limit=LIMIT)
    while True:
        listed += [m["message_id"] for m in page["messages"]]
        assert all(m["session_id"] == session["id"] for m in page["messages"])
        if page["next_cursor"] is None:
            break
        assert len(page["messages"]) == LIMIT
        # Between page reads: messages to this session and to others, and
        # another session with messages deleted.
        sent += [api.send(session["id"], f"later {len(sent)}")["message_id"] for _ in range(2)]
        api.send(other["id"])
        doomed = api.create()
        api.send(doomed["id"])
        api.delete(doomed["id"])
        page = api.messages(session["id"], limit=LIMIT, cursor=page["next_cursor"])

    assert listed == sent, "each message once, oldest first, new ones at the end"
    assert api.get(session["id"])["message_count"] == len(sent)


SORTS = [(sort, order) for sort in ("created_at", "last_active") for order in ("desc", "asc")]


def sort_key(sort):
    if sort == "created_at":
        return lambda s: s["id"]
    return lambda s: (s["last_active"], s["id"])


@pytest.mark.parametrize(("sort", "order"), SORTS, ids=lambda v: v)
@pytest.mark.parametrize(
    "filters",
    [{}, {"agent_id": "a"}, {"status": "active,paused"}, {"active_after": "2000-01-01T00:00:00Z"}],
    ids=filter_id,
)
def test_every_sort_and_order_returns_each_session_once_while_others_come_and_go(
    api, filters, sort, order
):
    existing = [
        make_session(api, "ab"[n % 2], "tu"[n % 3 == 0], STATUSES[n % 4]) for n in range(30)
    ]
    # Activity in another order than creation, so the two sorts differ.
    for n in (7, 2, 19, 11, 4, 23, 16):
        if existing[n]["status"] != "completed":
            api.send(existing[n]["id"])
    existing = [api.get(s["id"]) for s in existing]
    wanted = [s for s in existing if matches(s, filters)]
    assert len(wanted) > 2 * LIMIT
    expected = [s["id"] for s in sorted(wanted, key=sort_key(sort), reverse=order == "desc")]
    like = {"agent_id": filters.get("agent_id", "a"), "task_id": "t", "status": "active"}

    seen, created, deleted_unread = [], set(), set()
    params = dict(filters, sort=sort, order=order, limit=LIMIT)
    page = api.list(**params)
    while True:
        seen += [s["id"] for s in page["sessions"]]
        if page["next_cursor"] is None:
            break
        assert len(page["sessions"]) == LIMIT
        # Between page reads: new sessions (they sort after every existing
        # one, in both sorts), the session the cursor names deleted, and the
        # next unread one deleted.
        created |= {make_session(api, **like)["id"] for _ in range(2)}
        api.delete(seen[-1])
        unread = [i for i in expected if i not in seen and i not in deleted_unread]
        if unread:
            api.delete(unread[0])
            deleted_unread.add(unread[0])
        page = api.list(cursor=page["next_cursor"], **params)

    assert len(seen) == len(set(seen)), "a session came twice"
    old = [i for i in seen if i not in created]
    assert old == [i for i in expected if i not in deleted_unread], "each once, in order"
    # New sessions come after every old one: reached at the end of an
    # ascending walk, never in a descending one.
    assert seen[: len(old)] == old
    if order == "desc":
        assert not set(seen) & created
    assert deleted_unread
