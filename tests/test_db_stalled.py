"""A write transaction that stalls holds up no other writer for long.

PostgreSQL only: writers share no lock (their changes wait in a queue), and
only the publishing passes take the feed's append lock (``recording._APPEND_LOCK``),
so a stalled keyed write holds up no one, and the server ends a transaction
of the service's that sits idle past ``DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS``
(one holding the append lock would hold the passes up, and so the writers'
answers, until then).
"""

import os
import threading
import uuid

import pytest
from peewee import InterfaceError, InternalError, OperationalError
from servers import require

from sessions_app import create_app, db, idempotency, migrations
from sessions_app.feed import recording

URL = os.environ.get("TEST_DATABASE_URL", "")
require(URL.startswith("postgres"), "TEST_DATABASE_URL does not name a PostgreSQL database")

# A writer waiting for the lock longer than this gets a 503.
STATEMENT_TIMEOUT_MS = 3_000


def make_app(idle_ms):
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": URL,
            "DATABASE_STATEMENT_TIMEOUT_MS": STATEMENT_TIMEOUT_MS,
            "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS": idle_ms,
        }
    )
    migrations.upgrade()
    return app


@pytest.fixture
def closing():
    yield
    db.database.close_all()


def test_a_keyed_write_stalled_in_its_bookkeeping_holds_no_one_up(monkeypatch, closing):
    app = make_app(idle_ms=60_000)
    entered, release, answers = threading.Event(), threading.Event(), {}
    key = f"stall-{uuid.uuid4().hex}"
    store = idempotency._store

    def stalled_store(*args):
        entered.set()
        release.wait(30)
        store(*args)

    monkeypatch.setattr(idempotency, "_store", stalled_store)

    def keyed():
        response = app.test_client().post(
            "/api/sessions", json={"agent_id": "keyed"}, headers={"Idempotency-Key": key}
        )
        answers["keyed"] = response.status_code

    thread = threading.Thread(target=keyed)
    thread.start()
    try:
        assert entered.wait(10)
        other = app.test_client().post("/api/sessions", json={"agent_id": "other"})
    finally:
        release.set()
        thread.join()
    assert other.status_code == 201, other.get_json()
    assert answers["keyed"] == 201
    replay = app.test_client().post(
        "/api/sessions", json={"agent_id": "keyed"}, headers={"Idempotency-Key": key}
    )
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"


def test_a_stalled_transaction_holding_the_append_lock_is_ended_by_the_server(closing):
    app = make_app(idle_ms=1_000)
    # A connection made as the service makes its own, stalled inside a
    # write transaction right after taking the append lock.
    stalled = db.make_database(app.config)
    stalled.connect()
    try:
        stalled.execute_sql("BEGIN")
        stalled.execute_sql(f"SELECT pg_advisory_xact_lock({recording._APPEND_LOCK})")

        other = app.test_client().post("/api/sessions", json={"agent_id": "other"})

        assert other.status_code == 201, other.get_json()
        with pytest.raises((OperationalError, InterfaceError, InternalError)):
            stalled.execute_sql("SELECT 1")
    finally:
        stalled.close_all()


def test_a_request_whose_stalled_transaction_was_ended_answers_503(monkeypatch, closing):
    app = make_app(idle_ms=500)
    store = idempotency._store
    ended = threading.Event()

    def stalled_store(*args):
        ended.wait(1.5)  # past the idle timeout: the server ends the transaction
        store(*args)

    monkeypatch.setattr(idempotency, "_store", stalled_store)
    response = app.test_client().post(
        "/api/sessions", json={"agent_id": "keyed"}, headers={"Idempotency-Key": uuid.uuid4().hex}
    )
    assert response.status_code == 503, response.get_json()
    assert response.headers["Retry-After"] == "2"
    with db.database.connection_context():
        assert db.database.execute_sql("SELECT 1").fetchone() == (1,)
