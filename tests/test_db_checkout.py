"""A pooled PostgreSQL connection is pinged at checkout only when it has been idle a while.

A connection given back within ``deadlines.ALIVE_BYPASS_WINDOW`` is handed
out as it is: a GET costs one round trip, not two.  One that was idle
longer is pinged with ``SELECT 1`` as before.  A connection given back
broken (its server went away under a request) drops the pool's idle ones,
so a restarted server costs at most one 503, not one per idle connection.
The tests set the window on the pool (a minute, or none) rather than wait.
"""

import os
import threading
import time

import psycopg
import pytest
from peewee import OperationalError
from problems import assert_unavailable
from servers import require

from sessions_app import db

URL = os.environ.get("TEST_DATABASE_URL", "")
require(URL.startswith("postgres"), "TEST_DATABASE_URL does not name a PostgreSQL database")

PING = "SELECT 1"
LONG = 60.0  # seconds: a window no test outlasts, however loaded the machine


@pytest.fixture
def pg_app(make_app):
    app = make_app(URL, DATABASE_POOL_SIZE=4)
    yield app
    db.database.close_all()


@pytest.fixture
def pool(pg_app):
    return db.database.obj


@pytest.fixture
def client(pg_app):
    return pg_app.test_client()


@pytest.fixture
def sent(monkeypatch):
    """The statements psycopg sends for the test's thread, as text, in order."""
    statements = []
    execute = psycopg.Cursor.execute
    thread = threading.get_ident()

    def spy(self, query, *args, **kwargs):
        if threading.get_ident() == thread:
            statements.append(query if isinstance(query, str) else repr(query))
        return execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", spy)
    return statements


def idle(count):
    """Check ``count`` connections out at once and give them back; return their server pids."""
    together = threading.Barrier(count)
    pids = []

    def hold():
        with db.connected():
            pids.append(db.database.connection().info.backend_pid)
            together.wait(10)

    threads = [threading.Thread(target=hold) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(pids)) == count
    return pids


def terminate(pids):
    """End the server processes ``pids`` from another connection, and wait until they are gone."""
    with psycopg.connect(URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [pids])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [pids]
            ).fetchone()[0]
            if not left:
                return
            time.sleep(0.01)
    raise AssertionError(f"server processes {pids} did not end")


def query():
    """Take a connection from the pool, run one statement, and give it back."""
    with db.connected():
        db.database.execute_sql("SELECT 2")


def test_a_connection_given_back_moments_ago_is_not_pinged(pool, sent):
    pool.alive_bypass = LONG
    query()  # opens the connection: no ping
    sent.clear()
    query()
    query()
    assert sent == ["SELECT 2"] * 2


def test_a_get_is_one_round_trip_on_a_connection_just_given_back(pool, client, sent):
    pool.alive_bypass = LONG
    session = client.post("/api/sessions", json={"agent_id": "a"}).get_json()
    sent.clear()
    assert client.get(f"/api/sessions/{session['id']}").status_code == 200
    assert len(sent) == 1 and PING not in sent, sent


def test_a_connection_idle_past_the_window_is_pinged(pool, sent):
    pool.alive_bypass = 0
    query()
    sent.clear()
    query()
    assert sent == [PING, "SELECT 2"]


def test_a_connection_given_back_broken_drops_the_idle_ones(pool):
    pool.alive_bypass = LONG
    pids = idle(3)
    assert len(pool._connections) == 3
    with pytest.raises(OperationalError), db.connected():
        terminate(pids)
        db.database.execute_sql("SELECT 2")
    assert pool._connections == []
    assert pool._in_use == {}


def test_after_its_server_processes_end_the_pool_answers_at_once_past_the_window(pool, client):
    pool.alive_bypass = 0
    terminate(idle(3))
    assert [client.get("/health").status_code for _ in range(3)] == [200] * 3


def test_within_the_window_ended_server_processes_cost_one_503_at_most(pool, client):
    pool.alive_bypass = LONG
    terminate(idle(3))
    first = client.get("/health")
    if first.status_code != 200:
        assert_unavailable(first)
    assert [client.get("/health").status_code for _ in range(3)] == [200] * 3
