"""GET /api/sessions/<id>/messages: oldest first, keyset pages, 404 and 422."""

import pytest
from problems import MESSAGE_KEYS, assert_problem, invalid, problem

UNKNOWN = "session-0000000000000000000000000000"
NOT_ISSUED = "Not a cursor this service issued."


def read_all(api, session_id, limit):
    pages, cursor = [], None
    while True:
        params = {"limit": limit} if cursor is None else {"limit": limit, "cursor": cursor}
        page = api.messages(session_id, **params)
        pages.append(page["messages"])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
        assert isinstance(cursor, str)


def test_messages_come_oldest_first_with_their_fields(api):
    session_id = api.create()["id"]
    sent = [
        api.send(session_id, f"m{i}", role=role)
        for i, role in enumerate(["user", "assistant", "system", "user"])
    ]
    page = api.messages(session_id)
    assert page["next_cursor"] is None
    messages = page["messages"]
    assert all(set(m) == MESSAGE_KEYS for m in messages)
    assert [m["message_id"] for m in messages] == [r["message_id"] for r in sent]
    assert [m["timestamp"] for m in messages] == [r["timestamp"] for r in sent]
    assert [m["content"] for m in messages] == ["m0", "m1", "m2", "m3"]
    assert [m["role"] for m in messages] == ["user", "assistant", "system", "user"]
    assert {m["session_id"] for m in messages} == {session_id}
    assert {m["status"] for m in messages} == {"sent"}


def test_empty_session_has_no_messages(api):
    assert api.messages(api.create()["id"]) == {"messages": [], "next_cursor": None}


@pytest.mark.parametrize(("total", "limit"), [(7, 1), (7, 3), (6, 3), (6, 6), (5, 10)])
def test_pages_are_full_until_the_last(api, total, limit):
    session_id = api.create()["id"]
    sent = [api.send(session_id, f"m{i}")["message_id"] for i in range(total)]
    pages = read_all(api, session_id, limit)
    assert all(len(page) == limit for page in pages[:-1])
    assert 0 < len(pages[-1]) <= limit or total == 0
    assert [m["message_id"] for page in pages for m in page] == sent


def test_messages_of_other_sessions_are_not_listed(api):
    first, second = api.create()["id"], api.create()["id"]
    api.send(first, "one")
    api.send(second, "two")
    assert [m["content"] for m in api.messages(first)["messages"]] == ["one"]


def test_default_limit_is_100(api):
    session_id = api.create()["id"]
    for i in range(101):
        api.send(session_id, f"m{i}")
    page = api.messages(session_id)
    assert len(page["messages"]) == 100
    rest = api.messages(session_id, cursor=page["next_cursor"])
    assert [m["content"] for m in rest["messages"]] == ["m100"]
    assert rest["next_cursor"] is None
    assert len(api.messages(session_id, limit=1000)["messages"]) == 101


def test_unknown_session_is_404(client):
    assert_problem(
        client.get(f"/api/sessions/{UNKNOWN}/messages"),
        problem(404, f"No session has the id '{UNKNOWN}'."),
    )


LIMIT_RANGE = "Must be greater than or equal to 1 and less than or equal to 1000."


@pytest.mark.parametrize(
    ("query", "errors"),
    [
        ("limit=0", {"limit": [LIMIT_RANGE]}),
        ("limit=1001", {"limit": [LIMIT_RANGE]}),
        ("limit=-1", {"limit": ["Not a valid integer."]}),
        ("limit=abc", {"limit": ["Not a valid integer."]}),
        ("limit=1.0", {"limit": ["Not a valid integer."]}),
        ("limit=+5", {"limit": ["Not a valid integer."]}),
        ("limit=", {"limit": ["Not a valid integer."]}),
        ("limit=%205", {"limit": ["Not a valid integer."]}),
        ("limit=99999999999999999999", {"limit": ["Not a valid integer."]}),
        ("cursor=abc", {"cursor": ["Not a valid integer."]}),
        ("cursor=", {"cursor": ["Not a valid integer."]}),
        ("cursor=-1", {"cursor": ["Not a valid integer."]}),
        ("cursor=9999999999", {"cursor": [NOT_ISSUED]}),
        ("cursor=%ED%A0%80", {"cursor": ["Not a valid integer."]}),
        ("cursor=%00", {"cursor": ["Not a valid integer."]}),
        ("limit=1&limit=2", {"limit": ["Given more than once."]}),
        ("role=user", {"role": ["Unknown field."]}),
        (
            "limit=0&cursor=x&x=1",
            {"limit": [LIMIT_RANGE], "cursor": ["Not a valid integer."], "x": ["Unknown field."]},
        ),
    ],
)
def test_bad_query_is_422(api, client, query, errors):
    session_id = api.create()["id"]
    assert_problem(client.get(f"/api/sessions/{session_id}/messages?{query}"), invalid(**errors))


# -- newest first (section 8) -----------------------------------------------------


def read_all_in(api, session_id, limit, order):
    found, cursor = [], None
    while True:
        params = {"limit": limit, "order": order}
        if cursor is not None:
            params["cursor"] = cursor
        page = api.messages(session_id, **params)
        assert len(page["messages"]) == limit or page["next_cursor"] is None
        found += [m["content"] for m in page["messages"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return found


@pytest.mark.parametrize(("total", "limit"), [(7, 1), (7, 3), (6, 3), (6, 6), (5, 10), (0, 2)])
def test_desc_pages_newest_first_and_continue_backwards(api, total, limit):
    session_id = api.create()["id"]
    for i in range(total):
        api.send(session_id, f"m{i}")
    newest_first = [f"m{i}" for i in reversed(range(total))]
    assert read_all_in(api, session_id, limit, "desc") == newest_first
    assert read_all_in(api, session_id, limit, "asc") == newest_first[::-1]


def test_the_last_20_messages_in_one_request(api):
    session_id = api.create()["id"]
    for i in range(25):
        api.send(session_id, f"m{i}")
    page = api.messages(session_id, order="desc", limit=20)
    assert [m["content"] for m in page["messages"]] == [f"m{i}" for i in range(24, 4, -1)]
    assert page["next_cursor"] is not None
    rest = api.messages(session_id, order="desc", limit=20, cursor=page["next_cursor"])
    assert [m["content"] for m in rest["messages"]] == [f"m{i}" for i in range(4, -1, -1)]
    assert rest["next_cursor"] is None


def test_desc_paging_sees_no_message_twice_while_messages_arrive(api):
    session_id = api.create()["id"]
    for i in range(10):
        api.send(session_id, f"m{i}")
    found = []
    page = api.messages(session_id, order="desc", limit=3)
    while True:
        found += [m["content"] for m in page["messages"]]
        if page["next_cursor"] is None:
            break
        api.send(session_id, "later")  # newer than the first page: not in this walk
        page = api.messages(session_id, order="desc", limit=3, cursor=page["next_cursor"])
    assert found == [f"m{i}" for i in range(9, -1, -1)]


def test_desc_of_an_unknown_session_is_a_404(api, client):
    response = client.get(f"/api/sessions/{UNKNOWN}/messages?order=desc")
    assert response.status_code == 404


@pytest.mark.parametrize("value", ["DESC", "newest", "", "asc,desc"])
def test_a_bad_order_is_a_422(api, client, value):
    session_id = api.create()["id"]
    response = client.get(f"/api/sessions/{session_id}/messages?order={value}")
    assert_problem(response, invalid(order=["Must be one of: asc, desc."]))
