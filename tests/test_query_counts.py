"""Each request costs a fixed number of SQL statements, whatever the page size."""

import pytest

from sessions_app import db

PAGE_SIZES = (1, 10, 100)


def statement_kinds(counted):
    """Name each counted statement by its first word (SELECT, UPDATE ...)."""
    return [text.lstrip("('\"").split(maxsplit=1)[0].upper() for text in counted.statements]


@pytest.fixture
def sessions(api):
    """101 sessions of two agents, in several statuses, so every page of 100 is full."""
    created = []
    for n in range(101):
        session = api.create(agent_id="a" if n % 2 else "b", task_id="t")
        if n % 3:
            api.patch(session["id"], status="active" if n % 3 == 1 else "paused")
        created.append(session)
    return created


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"agent_id": "a"},
        {"task_id": "t"},
        {"status": "active"},
        {"agent_id": "a", "status": "paused"},
        {"status": "created,active,paused"},
    ],
    ids=lambda filters: ",".join(filters) or "none",
)
def test_session_list_costs_one_query_whatever_its_length(
    api, client, count_queries, sessions, filters
):
    counts = {}
    for limit in PAGE_SIZES:
        first = api.list(limit=limit, **filters)
        with count_queries() as counted:
            page = api.list(limit=limit, cursor=first["next_cursor"], **filters)
        assert page["sessions"], "the page must hold rows for the count to mean anything"
        counts[limit] = len(counted)
    assert counts == dict.fromkeys(PAGE_SIZES, 1)


def test_message_list_costs_one_query_whatever_its_length(api, count_queries):
    session = api.create()
    for n in range(201):
        api.send(session["id"], f"message {n}")
    counts = {}
    for limit in PAGE_SIZES:
        first = api.messages(session["id"], limit=limit)
        with count_queries() as counted:
            page = api.messages(session["id"], limit=limit, cursor=first["next_cursor"])
        assert len(page["messages"]) == limit
        counts[limit] = len(counted)
    assert counts == dict.fromkeys(PAGE_SIZES, 1)


def test_get_session_is_one_query(api, count_queries):
    session = api.create()
    with count_queries() as counted:
        api.get(session["id"])
    assert statement_kinds(counted) == ["SELECT"]


def test_message_write_is_three_statements_in_one_transaction(api, count_queries, monkeypatch):
    """The count moves, the message is stored and its change recorded: UPDATE, INSERT, INSERT."""
    session = api.create()
    with count_queries() as counted:
        # peewee does not log BEGIN and COMMIT: note them where they happen.
        for name in ("begin", "commit", "rollback"):
            monkeypatch.setattr(db.database.obj, name, noted(counted, name))
        api.send(session["id"])
    assert statement_kinds(counted) == ["BEGIN", "UPDATE", "INSERT", "INSERT", "COMMIT"]


def noted(counted, name):
    """Wrap the database's ``name`` method so each call is counted as a statement."""
    method = getattr(db.database.obj, name)

    def wrapper(*args, **kwargs):
        counted.statements.append(name.upper())
        return method(*args, **kwargs)

    return wrapper


def test_a_page_of_changes_reads_where_the_feed_stands_once_then_its_rows(
    api, client, count_queries, sessions
):
    counts = {}
    for limit in PAGE_SIZES:
        with count_queries() as counted:
            response = client.get("/api/changes", query_string={"cursor": 1, "limit": limit})
        assert len(response.get_json()["changes"]) == limit
        counts[limit] = statement_kinds(counted)
    assert counts == dict.fromkeys(PAGE_SIZES, ["SELECT", "SELECT"])
