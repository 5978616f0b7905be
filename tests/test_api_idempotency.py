"""Contract section 5: Idempotency-Key on create and on message."""

import json
import subprocess
import sys
import threading
from contextlib import contextmanager

import psycopg
import pytest
from problems import assert_problem, invalid, problem

from sessions_app import create_app, db, idempotency_keys, migrations
from sessions_app.idempotency_keys import IdempotencyKey
from sessions_app.models import Message, Session

BAD_KEY = "Must be 1 to 255 printable ASCII characters, without spaces."
REUSED = problem(
    422,
    "This Idempotency-Key was used for a different request.",
    errors={"Idempotency-Key": ["Used for a different request (another body or session)."]},
)
IN_FLIGHT = problem(
    409,
    "A request with this Idempotency-Key is still being handled; retry it shortly to get "
    "its answer.",
)


def post(client, path, body, key=None, raw=None, **headers):
    if key is not None:
        headers["Idempotency-Key"] = key
    data = raw if raw is not None else json.dumps(body)
    return client.post(path, data=data, content_type="application/json", headers=headers)


def create(client, body, key, **headers):
    return post(client, "/api/sessions", body, key, **headers)


def send(client, session_id, body, key, path="message", **headers):
    return post(client, f"/api/sessions/{session_id}/{path}", body, key, **headers)


def fresh_app(database_url, **settings):
    """An app of its own, with ``settings``, on the test's database, emptied."""
    app = create_app({"TESTING": True, "DATABASE_URL": database_url, **settings})
    migrations.upgrade()
    with db.database.connection_context():
        for model in (IdempotencyKey, Message, Session):
            model.delete().execute()
    return app


def stored(model):
    with db.database.connection_context():
        return model.select().count()


def assert_replay(first, again):
    assert again.status_code == first.status_code == 201
    assert again.get_data() == first.get_data()
    for header in ("Location", "ETag", "Content-Type"):
        assert again.headers.get(header) == first.headers.get(header), header
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers


# -- create --------------------------------------------------------------------


def test_a_retried_create_gets_the_first_answer_and_makes_nothing(api, client):
    body = {"agent_id": "a", "data": {"x": 1}}
    first = create(client, body, "create-1")
    again = create(client, body, "create-1")
    assert_replay(first, again)
    assert first.headers["ETag"] == '"1"'
    assert first.headers["Location"] == f"/api/sessions/{first.get_json()['id']}"
    assert [s["id"] for s in api.list()["sessions"]] == [first.get_json()["id"]]


def test_member_order_and_whitespace_do_not_count(client):
    first = create(client, None, "k", raw='{"agent_id": "a", "task_id": "t"}')
    again = create(client, None, "k", raw='{ "task_id":"t",\n"agent_id":"a" }')
    assert_replay(first, again)


def test_without_a_key_every_create_makes_a_session(api, client):
    create(client, {"agent_id": "a"}, None)
    create(client, {"agent_id": "a"}, None)
    assert len(api.list()["sessions"]) == 2


def test_a_replay_is_the_first_answer_even_after_changes_and_deletion(api, client):
    first = create(client, {"agent_id": "a"}, "k")
    session_id = first.get_json()["id"]
    api.patch(session_id, status="active", data={"changed": True})
    assert_replay(first, create(client, {"agent_id": "a"}, "k"))
    api.delete(session_id)
    assert_replay(first, create(client, {"agent_id": "a"}, "k"))
    assert api.list()["sessions"] == []


@pytest.mark.parametrize(
    "other",
    [
        {"agent_id": "b", "data": {"n": 1}},
        {"agent_id": "a", "data": {"n": 1}, "task_id": None},  # null sent is not omitted
        {"agent_id": "a"},
        {"agent_id": "a", "data": {"n": 1.0}},
    ],
)
def test_the_same_key_for_another_create_is_422(api, client, other):
    assert create(client, {"agent_id": "a", "data": {"n": 1}}, "k").status_code == 201
    assert_problem(create(client, other, "k"), REUSED)
    assert len(api.list()["sessions"]) == 1


def test_a_failed_create_stores_nothing_so_the_key_can_be_used_again(api, client):
    bad = create(client, {"agent_id": ""}, "k")
    assert bad.status_code == 422
    not_json = create(client, None, "k", raw="{")
    assert not_json.status_code == 400
    assert stored(IdempotencyKey) == 0
    assert create(client, {"agent_id": "a"}, "k").status_code == 201


def test_a_replay_after_a_restart(database_url, tmp_path):
    def fresh_client():
        app = create_app({"TESTING": True, "DATABASE_URL": database_url})
        return app.test_client()

    app = fresh_app(database_url)
    try:
        first = create(app.test_client(), {"agent_id": "a"}, "k")
        db.database.close_all()
        assert_replay(first, create(fresh_client(), {"agent_id": "a"}, "k"))
    finally:
        db.database.close_all()


# -- message -------------------------------------------------------------------


@pytest.mark.parametrize("retry_path", ["message", "messages"])
def test_a_retried_message_is_stored_and_counted_once(api, client, retry_path):
    session_id = api.create()["id"]
    body = {"content": "hello", "role": "assistant"}
    first = send(client, session_id, body, "m-1")
    before = api.get(session_id)
    again = send(client, session_id, body, "m-1", path=retry_path)
    assert_replay(first, again)
    after = api.get(session_id)
    assert after == before
    assert after["message_count"] == 1 and after["version"] == 2
    assert len(api.messages(session_id)["messages"]) == 1


def test_a_message_replay_survives_the_session(api, client):
    session_id = api.create()["id"]
    first = send(client, session_id, {"content": "x"}, "k")
    api.delete(session_id)
    assert_replay(first, send(client, session_id, {"content": "x"}, "k"))
    assert stored(Message) == 0


@pytest.mark.parametrize(
    "other",
    [
        {"content": "y"},
        {"content": "x", "role": "user"},  # the default, but not what was sent
    ],
)
def test_the_same_key_for_another_message_is_422(api, client, other):
    session_id = api.create()["id"]
    assert send(client, session_id, {"content": "x"}, "k").status_code == 201
    assert_problem(send(client, session_id, other, "k"), REUSED)
    assert api.get(session_id)["message_count"] == 1


def test_the_same_key_for_another_session_or_endpoint_is_422(api, client):
    one, two = api.create()["id"], api.create()["id"]
    assert send(client, one, {"content": "x"}, "k").status_code == 201
    assert_problem(send(client, two, {"content": "x"}, "k"), REUSED)
    assert_problem(create(client, {"agent_id": "a"}, "k"), REUSED)
    assert api.get(two)["message_count"] == 0


def test_a_refused_message_stores_nothing(api, client):
    unknown = "session-0000000000000000000000000000"
    assert send(client, unknown, {"content": "x"}, "k").status_code == 404
    done = api.patch(api.create()["id"], status="completed")["id"]
    assert send(client, done, {"content": "x"}, "k").status_code == 409
    assert stored(IdempotencyKey) == 0
    open_one = api.create()["id"]
    assert send(client, open_one, {"content": "x"}, "k").status_code == 201


# -- the key itself ------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "a b", "x" * 256, "caf\u00e9", "tab\there", "\x7f"])
def test_a_malformed_key_is_422_naming_the_header(api, client, key):
    session_id = api.create()["id"]
    assert_problem(
        create(client, {"agent_id": "a"}, key), invalid(**{"Idempotency-Key": [BAD_KEY]})
    )
    assert_problem(
        send(client, session_id, {"content": "x"}, key), invalid(**{"Idempotency-Key": [BAD_KEY]})
    )
    assert len(api.list()["sessions"]) == 1


@pytest.mark.parametrize("key", ["!", "~" * 255, "".join(map(chr, range(0x21, 0x7F)))])
def test_any_printable_ascii_key_of_up_to_255_characters(client, key):
    assert create(client, {"agent_id": "a"}, key).status_code == 201
    assert create(client, {"agent_id": "a"}, key).headers["Idempotent-Replayed"] == "true"


def test_the_key_is_ignored_on_other_endpoints(api, client):
    session_id = api.create()["id"]
    headers = {"Idempotency-Key": "not a valid key"}
    assert client.get(f"/api/sessions/{session_id}", headers=headers).status_code == 200
    response = client.patch(f"/api/sessions/{session_id}", json={"prompt": "p"}, headers=headers)
    assert response.status_code == 200
    assert client.get("/api/sessions", headers=headers).status_code == 200
    assert client.delete(f"/api/sessions/{session_id}", headers=headers).status_code == 204


# -- tokens --------------------------------------------------------------------


@pytest.fixture
def guarded(database_url):
    app = fresh_app(database_url, SESSIONS_API_TOKENS="alice,bob")
    yield app.test_client()
    db.database.close_all()


def test_each_token_has_its_own_keys(guarded):
    alice = {"Authorization": "Bearer alice"}
    bob = {"Authorization": "Bearer bob"}
    from_alice = create(guarded, {"agent_id": "a"}, "k", **alice)
    from_bob = create(guarded, {"agent_id": "a"}, "k", **bob)
    assert from_alice.status_code == from_bob.status_code == 201
    assert "Idempotent-Replayed" not in from_bob.headers
    assert from_alice.get_json()["id"] != from_bob.get_json()["id"]
    # Another body under the same key is only "another request" for its own caller.
    assert create(guarded, {"agent_id": "b"}, "k", **alice).status_code == 422
    assert_replay(from_bob, create(guarded, {"agent_id": "a"}, "k", **bob))
    assert_replay(from_alice, create(guarded, {"agent_id": "a"}, "k", **alice))


# -- keeping and forgetting ----------------------------------------------------


def age_keys(seconds):
    """Make every stored key ``seconds`` older."""
    with db.database.connection_context():
        IdempotencyKey.update(created_at=IdempotencyKey.created_at - seconds * 1_000_000).execute()


def test_an_expired_key_is_forgotten(api, client):
    first = create(client, {"agent_id": "a"}, "k")
    age_keys(86_400 - 60)
    assert_replay(first, create(client, {"agent_id": "a"}, "k"))
    age_keys(120)
    again = create(client, {"agent_id": "b"}, "k")
    assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers
    assert len(api.list()["sessions"]) == 2


def keys_that(purge, count):
    """Return ``count`` keys whose storing does (or does not) delete expired keys."""
    candidates = (f"new-{n}" for n in range(10_000))
    chosen = (
        k
        for k in candidates
        if (idempotency_keys.lock_id("", k) % idempotency_keys.PURGE_EVERY == 0) == purge
    )
    return [next(chosen) for _ in range(count)]


def test_storing_a_key_deletes_a_batch_of_expired_ones_now_and_then(client):
    batch = idempotency_keys.PURGE_BATCH
    for n in range(batch + 5):
        assert create(client, {"agent_id": "a"}, f"old-{n}").status_code == 201
    age_keys(86_401)
    (quiet,) = keys_that(purge=False, count=1)
    first, second = keys_that(purge=True, count=2)
    create(client, {"agent_id": "a"}, quiet)
    assert stored(IdempotencyKey) == batch + 5 + 1
    create(client, {"agent_id": "a"}, first)
    assert stored(IdempotencyKey) == 5 + 2
    create(client, {"agent_id": "a"}, second)
    assert stored(IdempotencyKey) == 3
    assert stored(Session) == batch + 5 + 3


def test_the_ttl_is_a_setting(database_url):
    app = fresh_app(database_url, IDEMPOTENCY_TTL_SECONDS=60)
    try:
        client = app.test_client()
        assert create(client, {"agent_id": "a"}, "ttl").status_code == 201
        age_keys(61)
        again = create(client, {"agent_id": "b"}, "ttl")
        assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers
    finally:
        db.database.close_all()


# -- a key in flight -----------------------------------------------------------


@contextmanager
def key_held_elsewhere(database_url, key):
    """Hold ``key`` as a request in another process would, until the block ends."""
    number = idempotency_keys.lock_id("", key)
    if database_url.startswith("postgres"):
        with psycopg.connect(database_url) as other:
            other.execute("SELECT pg_advisory_xact_lock(%s)", (number,))
            yield
            other.rollback()
        return
    path = database_url.removeprefix("sqlite:///") + ".keys-lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_BYTE, path, str(number & (2**62 - 1))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.communicate("")


HOLD_BYTE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, int(sys.argv[2]))
print("held", flush=True)
sys.stdin.read()
"""


def test_a_key_in_flight_is_409_then_free(api, client, database_url):
    """A request whose key another process holds is a 409; once let go, it is handled."""
    with key_held_elsewhere(database_url, "k"):
        assert_problem(create(client, {"agent_id": "a"}, "k"), IN_FLIGHT)
        session_id = api.create()["id"]
        assert_problem(send(client, session_id, {"content": "x"}, "k"), IN_FLIGHT)
        assert create(client, {"agent_id": "a"}, "other-key").status_code == 201
    assert create(client, {"agent_id": "a"}, "k").status_code == 201
    assert stored(Session) == 3
    assert stored(Message) == 0


def test_the_same_key_from_many_threads_is_one_write(app):
    """Threads of one process: one 201 made the session; the rest replay it or get 409."""
    answers, start = [], threading.Barrier(8)

    def client_thread():
        client = app.test_client()
        start.wait()
        for _ in range(5):
            answers.append(create(client, {"agent_id": "a"}, "k"))

    threads = [threading.Thread(target=client_thread) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = {a.status_code for a in answers}
    assert statuses <= {201, 409}
    created = [a for a in answers if a.status_code == 201]
    assert len({a.get_data() for a in created}) == 1
    assert sum("Idempotent-Replayed" not in a.headers for a in created) == 1
    for conflict in (a for a in answers if a.status_code == 409):
        assert_problem(conflict, IN_FLIGHT)
    assert stored(Session) == 1
