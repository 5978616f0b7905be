"""Connections are held around database work, not around requests."""

import pytest
from problems import assert_unavailable

from sessions_app import db

SID = "session-0000000000000000000000000000"


def held(database):
    """Return how many of the pool's connections are checked out."""
    return len(database._in_use)


@pytest.fixture
def watched(app):
    """Record, just before each response is sent, whether a connection is still held."""
    seen = []

    @app.after_request
    def record(response):
        seen.append((db.database.is_closed(), held(db.database.obj)))
        return response

    return seen


def test_every_endpoint_gives_its_connection_back_before_the_response(api, client, watched):
    session = api.create()
    api.send(session["id"])
    api.get(session["id"])
    api.list(status="created,active")
    api.messages(session["id"])
    api.patch(session["id"], status="paused")
    api.delete(session["id"])
    assert client.get("/health").status_code == 200
    assert watched == [(True, 0)] * 8


def test_a_request_that_needs_no_data_takes_no_connection(client, watched, count_queries):
    with count_queries() as counted:
        for path in ("/metrics", "/api/openapi.json", "/api/docs/", "/nope"):
            client.get(path)
    assert len(counted) == 0
    assert watched == [(True, 0)] * 4


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("get", "/metrics", {}, 200),
        ("get", "/api/openapi.json", {}, 200),
        ("get", "/api/docs/", {}, 200),
        ("get", "/nope", {}, 404),
        ("put", "/api/sessions", {}, 405),
        ("post", "/api/sessions", {"data": "{}", "content_type": "text/plain"}, 415),
        ("get", "/api/sessions", {"query_string": {"limit": 0}}, 422),
    ],
)
def test_answers_without_data_are_unaffected_by_an_outage(
    unreachable_client, method, path, kwargs, status
):
    assert getattr(unreachable_client, method)(path, **kwargs).status_code == status


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/health"),
        ("get", "/api/sessions"),
        ("get", f"/api/sessions/{SID}"),
        ("delete", f"/api/sessions/{SID}"),
        ("get", f"/api/sessions/{SID}/messages"),
    ],
)
def test_answers_that_need_data_are_503_in_an_outage(unreachable_client, method, path):
    assert_unavailable(getattr(unreachable_client, method)(path))


def test_a_nested_scope_leaves_the_outer_connection_open(app):
    with db.connected():
        outer = db.database.connection()
        with db.connected():
            assert db.database.connection() is outer
        assert not db.database.is_closed()
        with db.database.connection_context():
            assert db.database.connection() is outer
        assert not db.database.is_closed()
        db.ping()
        assert db.database.connection() is outer
    assert db.database.is_closed()
    assert held(db.database.obj) == 0


def test_a_scope_inside_a_connection_opened_by_hand_leaves_it_open(app):
    db.database.connect()
    try:
        db.ping()
        assert not db.database.is_closed()
    finally:
        db.database.close()


def test_a_scope_gives_its_connection_back_when_the_block_raises(app):
    with pytest.raises(ZeroDivisionError), db.connected():
        db.ping()
        1 / 0  # noqa: B018
    assert db.database.is_closed()
    assert held(db.database.obj) == 0


def test_a_decorated_function_holds_a_connection_only_while_it_runs(app):
    @db.connected()
    def inside():
        return db.database.is_closed(), held(db.database.obj)

    assert inside() == (False, 1)
    assert inside() == (False, 1)  # the decorator makes a fresh scope each call
    assert db.database.is_closed()
    assert held(db.database.obj) == 0
