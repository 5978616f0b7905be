"""sessions_app.client against the app in process, and against a real Gunicorn server for
what only a server shows (answers lost on the way, restarts), on SQLite and PostgreSQL."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from itertools import islice
from urllib.parse import urlsplit

import httpx
import pytest
from databases import BACKENDS, new_database
from faultproxy import FaultProxy
from live import IN_PROCESS, needs, new_agent
from servers import free_port, start_gunicorn, stop, wait_for, worker_pids

from sessions_app import db
from sessions_app.client import (
    ApiError,
    ConflictError,
    ConnectionFailed,
    Count,
    GoneError,
    Message,
    NotFoundError,
    Page,
    PreconditionFailedError,
    Receipt,
    ServiceUnavailableError,
    Session,
    SessionsClient,
    UnprocessableError,
    retries,
)
from sessions_app.client.errors import retry_after_seconds

SERVER_MODULES = (
    "flask",
    "werkzeug",
    "peewee",
    "playhouse",
    "marshmallow",
    "psycopg",
    "gunicorn",
    "prometheus_client",
    "apispec",
    "orjson",
)


# -- without a server --------------------------------------------------------------


def test_the_client_imports_nothing_of_the_server():
    code = (
        "import json, sys\n"
        "import sessions_app.client, sessions_app.client.cli\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))
    server = [
        name
        for name in loaded
        if name.split(".")[0] in SERVER_MODULES
        or (name.startswith("sessions_app.") and not name.startswith("sessions_app.client"))
    ]
    assert server == []
    assert "httpx" in loaded and "click" in loaded


def test_create_app_still_comes_from_the_package():
    from sessions_app import create_app

    assert create_app.__module__ == "sessions_app"


def test_from_env_reads_the_url_and_token():
    environ = {"SESSIONS_API_URL": "http://example.test:9000/", "SESSIONS_API_TOKEN": "t0k"}
    with SessionsClient.from_env(environ) as client:
        assert client.base_url == "http://example.test:9000"
        assert client._http.headers["Authorization"] == "Bearer t0k"


def test_from_env_needs_a_url():
    with pytest.raises(ValueError, match="SESSIONS_API_URL"):
        SessionsClient.from_env({})


def test_unknown_filters_are_refused_before_any_request():
    with SessionsClient("http://127.0.0.1:1") as client, pytest.raises(TypeError, match="colour"):
        client.sessions(colour="blue")


def test_a_naive_datetime_filter_is_refused():
    with SessionsClient("http://127.0.0.1:1") as client, pytest.raises(ValueError, match="zone"):
        client.sessions(created_after=datetime(2026, 1, 1)).page()


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("3", 3.0), ("Thu, 01 Jan 2099 00:00:10 GMT", 10.0), ("soon", None), (None, None)],
)
def test_retry_after_in_seconds_or_as_a_date(header, seconds):
    now = datetime(2099, 1, 1, tzinfo=UTC)
    assert retry_after_seconds(header, now=now) == seconds


def test_an_unreachable_service_is_connection_failed():
    unreachable = SessionsClient(f"http://127.0.0.1:{free_port()}", max_retries=1)
    with unreachable as client, pytest.raises(ConnectionFailed, match="GET"):
        client.get("session-0sgqg1yr7y6hrsf7nb7vs55jvzr0")


# -- every method, against the server ------------------------------------------------


@pytest.fixture
def client(request, live_backend, tmp_path, make_app):
    """A client of the app in process, on a fresh database; a ``server``-marked test (one
    that goes through the fault proxy, or many writers at once) gets one of the real server."""
    if request.node.get_closest_marker("server"):
        with SessionsClient(request.getfixturevalue("live_server"), timeout=10) as client:
            yield client
        return
    if live_backend == "sqlite":
        database_url = f"sqlite:///{tmp_path}/sessions.sqlite3"
    else:
        database_url = os.environ["TEST_DATABASE_URL"]
    transport = httpx.WSGITransport(app=make_app(database_url))
    try:
        with SessionsClient(IN_PROCESS, timeout=10, transport=transport) as client:
            yield client
    finally:
        db.database.close_all()


def test_create_get_and_the_raw_json(client):
    agent = new_agent()
    created = client.create(agent, task_id="task-1", prompt="Go", data={"model": "m"})
    assert isinstance(created, Session)
    assert (created.agent_id, created.task_id, created.status) == (agent, "task-1", "created")
    assert (created.prompt, created.data, created.message_count) == ("Go", {"model": "m"}, 0)
    assert created.created_at.tzinfo == UTC and created.created_at == created.last_active
    assert abs(datetime.now(UTC) - created.created_at) < timedelta(minutes=1)
    assert created.raw["id"] == created.id and created.raw["data"] == {"model": "m"}
    fetched = client.get(created.id)
    assert fetched.raw == created.raw
    assert fetched == created
    assert client.health() == {"status": "ok"}


def test_send_and_messages(client):
    session = client.create(new_agent())
    receipt = client.send(session.id, "hello")
    second = client.send(session.id, "line one\nline two", role="assistant")
    assert isinstance(receipt, Receipt) and receipt.message_id.startswith("msg-")
    assert (receipt.session_id, receipt.status, receipt.replayed) == (session.id, "sent", False)
    found = list(client.messages(session.id))
    assert all(isinstance(message, Message) for message in found)
    assert [(m.message_id, m.role, m.content) for m in found] == [
        (receipt.message_id, "user", "hello"),
        (second.message_id, "assistant", "line one\nline two"),
    ]
    assert found[0].timestamp == receipt.timestamp
    after = client.get(session.id)
    assert (after.status, after.message_count, after.last_active) == ("active", 2, second.timestamp)


def test_messages_page_by_page(client):
    session = client.create(new_agent())
    sent = [client.send(session.id, f"m{n}").message_id for n in range(7)]
    pager = client.messages(session.id, limit=3)
    first = pager.page()
    assert isinstance(first, Page) and len(first) == 3 and first.next_cursor
    assert [m.message_id for m in pager.page(first.next_cursor)] == sent[3:6]
    assert [len(page) for page in pager.pages()] == [3, 3, 1]
    assert [m.message_id for m in pager] == sent


def test_update_status_data_and_prompt(client):
    session = client.create(new_agent(), prompt="p", data={"a": 1, "b": {"c": 2}})
    updated = client.update(session.id, status="paused", data={"a": None, "b": {"d": 3}})
    assert (updated.status, updated.data, updated.prompt) == (
        "paused",
        {"b": {"c": 2, "d": 3}},
        "p",
    )
    cleared = client.update(session.id, prompt=None)
    assert cleared.prompt is None and cleared.raw["prompt"] is None
    assert client.update(session.id).raw == cleared.raw


def test_delete_then_404(client):
    session = client.create(new_agent())
    client.send(session.id, "bye")
    client.delete(session.id)
    with pytest.raises(NotFoundError):
        client.get(session.id)
    with pytest.raises(NotFoundError) as raised:
        client.delete(session.id)
    assert raised.value.status == 404


def test_errors_carry_the_problem_document(client):
    session = client.create(new_agent())
    with pytest.raises(NotFoundError) as missing:
        client.get("session-0sgqg1yr7y6hrsf7nb7vs55jvzr0")
    error = missing.value
    assert (error.status, error.title) == (404, "Not Found")
    assert "session-0sgqg1yr7y6hrsf7nb7vs55jvzr0" in error.detail
    assert error.request_id and error.problem["instance"] == error.request_id
    with pytest.raises(NotFoundError):
        client.get("../../health")  # an id is one path segment, whatever it holds
    with pytest.raises(UnprocessableError) as invalid:
        client.create("")
    assert set(invalid.value.errors) == {"agent_id"}
    assert "agent_id" in str(invalid.value)
    client.update(session.id, status="completed")
    with pytest.raises(ConflictError, match="completed"):
        client.update(session.id, status="active")
    with pytest.raises(ConflictError) as final:
        client.send(session.id, "too late")
    assert isinstance(final.value, ApiError) and final.value.status == 409


def test_list_filters_and_one_page(client):
    agent = new_agent()
    made = [client.create(agent, task_id=f"t{n % 2}") for n in range(5)]
    client.update(made[0].id, status="paused")
    client.update(made[1].id, status="failed")
    newest_first = [s.id for s in reversed(made)]
    assert [s.id for s in client.sessions(agent_id=agent)] == newest_first
    assert [s.id for s in client.sessions(agent_id=agent, task_id="t0")] == newest_first[::2]
    both = client.sessions(agent_id=agent, status=["paused", "failed"])
    assert {s.id for s in both} == {made[0].id, made[1].id}
    page = client.sessions(agent_id=agent, limit=2).page()
    assert [s.id for s in page] == newest_first[:2] and page.next_cursor
    summary = page.items[0]
    assert summary.prompt is None and summary.data is None and summary.raw.keys() >= {"id"}


@pytest.mark.server
def test_auto_paging_returns_each_of_2500_sessions_once(client):
    agent = new_agent()
    with ThreadPoolExecutor(8) as pool:
        created = set(pool.map(lambda _: client.create(agent).id, range(2500)))
    assert len(created) == 2500
    seen = [s.id for s in client.sessions(agent_id=agent, limit=1000)]
    assert len(seen) == 2500 and set(seen) == created
    assert seen == sorted(seen, reverse=True)  # ids sort by creation: newest first
    pages = list(client.sessions(agent_id=agent, limit=300).pages())
    assert [len(p) for p in pages] == [300] * 8 + [100]
    assert [s.id for p in pages for s in p] == seen


# -- retries -------------------------------------------------------------------------


@pytest.fixture
def proxy(live_server):
    parts = urlsplit(live_server)
    with FaultProxy((parts.hostname, parts.port)) as proxy:
        yield proxy


@pytest.mark.server
def test_a_read_whose_answer_is_lost_is_sent_again(client, proxy):
    session = client.create(new_agent())
    proxy.drop_answer("GET", "/api/sessions/")
    with SessionsClient(proxy.url) as through:
        assert through.get(session.id).id == session.id
    tries = proxy.requests_to("GET", f"/api/sessions/{session.id}")
    assert len(tries) == 2
    assert tries[0].headers["x-request-id"] == tries[1].headers["x-request-id"]


@pytest.mark.server
def test_a_create_and_a_message_are_retried_with_the_same_key(client, proxy):
    proxy.drop_answer("POST", "/api/sessions")
    with SessionsClient(proxy.url) as through:
        session = through.create(new_agent())
        proxy.drop_answer("POST", f"/api/sessions/{session.id}/message")
        through.send(session.id, "once")
    for path in ("/api/sessions", f"/api/sessions/{session.id}/message"):
        first, second = [s.headers for s in proxy.requests_to("POST", path)][:2]
        assert first["idempotency-key"] and first["idempotency-key"] == second["idempotency-key"]
    other = proxy.requests_to("POST", "/api/sessions")
    assert len({s.headers["idempotency-key"] for s in other}) == 2  # one key per call


@pytest.mark.server
def test_dropped_answers_leave_exactly_one_session_and_one_message(client, proxy):
    needs(client.base_url, "idempotency")
    agent = new_agent()
    proxy.drop_answer("POST", "/api/sessions")
    with SessionsClient(proxy.url) as through:
        session = through.create(agent, task_id="fault")
        proxy.drop_answer("POST", f"/api/sessions/{session.id}/message")
        receipt = through.send(session.id, "exactly once")
    assert len(proxy.requests_to("POST", "/api/sessions")) >= 2
    assert [s.id for s in client.sessions(agent_id=agent)] == [session.id]
    assert [m.message_id for m in client.messages(session.id)] == [receipt.message_id]
    assert receipt.replayed and client.get(session.id).message_count == 1


@pytest.mark.server
def test_a_409_after_a_lost_answer_is_asked_again(proxy):
    # The first try is lost; the second finds it still being handled (409); the third gets it.
    proxy.drop_answer("POST", "/api/sessions")
    problem = {"status": 409, "title": "Conflict", "detail": "A request with this key is running."}
    proxy.answer("POST", "/api/sessions", 409, json.dumps(problem).encode())
    with SessionsClient(proxy.url) as through:
        session = through.create(new_agent())
    tries = proxy.requests_to("POST", "/api/sessions")
    assert len(tries) == 3 and session.id.startswith("session-")
    assert len({t.headers["idempotency-key"] for t in tries}) == 1


@pytest.mark.server
def test_an_update_without_if_match_is_not_sent_twice(client, proxy):
    session = client.create(new_agent())
    proxy.drop_answer("PATCH", "/api/sessions/")
    with SessionsClient(proxy.url) as through, pytest.raises(ConnectionFailed):
        through.update(session.id, data={"n": 1})
    assert len(proxy.requests_to("PATCH", "/api/sessions/")) == 1
    assert client.get(session.id).data == {"n": 1}


@pytest.mark.server
def test_a_lost_delete_answer_is_not_a_404(client, proxy):
    session = client.create(new_agent())
    proxy.drop_answer("DELETE", "/api/sessions/")
    with SessionsClient(proxy.url) as through:
        through.delete(session.id)
    assert len(proxy.requests_to("DELETE", "/api/sessions/")) == 2
    with pytest.raises(NotFoundError):
        client.get(session.id)


@pytest.mark.server
def test_a_503_is_retried_after_its_retry_after(client, proxy):
    session = client.create(new_agent())
    problem = {"title": "Service Unavailable", "status": 503, "detail": "down"}
    proxy.answer(
        "GET",
        "/api/sessions/",
        503,
        json.dumps(problem).encode(),
        [("Content-Type", "application/problem+json"), ("Retry-After", "1")],
    )
    with SessionsClient(proxy.url) as through:
        assert through.get(session.id).id == session.id
    first, second = proxy.requests_to("GET", "/api/sessions/")
    assert second.at - first.at >= 1.0


@pytest.mark.server
def test_retries_stop_after_max_retries(proxy):
    proxy.answer("GET", "/api/sessions", 503, b"busy", [("Retry-After", "0")], times=3)
    through = SessionsClient(proxy.url, max_retries=2)
    with through, pytest.raises(ServiceUnavailableError) as raised:
        through.sessions().page()
    error = raised.value
    assert (error.status, error.retry_after, error.detail) == (503, 0.0, "busy")
    assert len(proxy.requests_to("GET", "/api/sessions")) == 3


@pytest.mark.server
def test_a_422_is_not_retried(proxy):
    with SessionsClient(proxy.url) as through, pytest.raises(UnprocessableError):
        through.sessions(status="Active").page()
    assert len(proxy.requests_to("GET", "/api/sessions")) == 1


@pytest.mark.server
def test_watch_raises_gone_on_410(proxy):
    problem = {"status": 410, "title": "Gone", "detail": "List again, then cursor=latest."}
    proxy.answer("GET", "/api/changes", 410, json.dumps(problem).encode())
    with SessionsClient(proxy.url) as through, pytest.raises(GoneError, match="cursor=latest"):
        next(through.watch("1"))


# -- contract sections 5-9, as the server gains them ---------------------------------


def test_if_match_versions(client):
    needs(client.base_url, "versions")
    session = client.create(new_agent())
    assert session.version == 1 and session.etag == '"1"'
    changed = client.update(session.id, status="active", if_match=session.version)
    assert (changed.version, changed.etag) == (2, '"2"')
    with pytest.raises(PreconditionFailedError) as stale:
        client.update(session.id, status="paused", if_match=1)
    assert stale.value.status == 412 and client.get(session.id).status == "active"
    with pytest.raises(PreconditionFailedError):
        client.delete(session.id, if_match='"1"')
    client.delete(session.id, if_match=changed.etag)


def test_count(client):
    needs(client.base_url, "count")
    agent = new_agent()
    made = [client.create(agent) for _ in range(3)]
    client.update(made[0].id, status="failed")
    counted = client.count(agent_id=agent)
    assert isinstance(counted, Count) and counted.count == 3
    assert counted.by_status == {
        "created": 2,
        "active": 0,
        "paused": 0,
        "completed": 0,
        "failed": 1,
    }
    assert client.count(agent_id=agent, status=["failed", "paused"]).count == 1


def test_time_filters(client):
    needs(client.base_url, "time_filters")
    agent = new_agent()
    early = client.create(agent)
    late = client.create(agent)
    assert [s.id for s in client.sessions(agent_id=agent, created_after=early.created_at)] == [
        late.id
    ]
    before = client.sessions(agent_id=agent, created_before=early.created_at)
    assert [s.id for s in before] == [early.id]
    oldest_first = client.sessions(agent_id=agent, order="asc")
    assert [s.id for s in oldest_first] == [early.id, late.id]


def test_newest_messages_first(client):
    needs(client.base_url, "messages_order")
    session = client.create(new_agent())
    sent = [client.send(session.id, f"m{n}").message_id for n in range(5)]
    assert [m.message_id for m in client.messages(session.id, order="desc", limit=2)] == sent[::-1]


def test_tail_follows_new_messages(client):
    needs(client.base_url, "messages_wait")
    session = client.create(new_agent())
    first = client.send(session.id, "before").message_id
    tailing = client.tail(session.id, wait=5)
    assert next(tailing).message_id == first
    later = []
    sender = threading.Timer(0.5, lambda: later.append(client.send(session.id, "after")))
    sender.start()
    arrived = next(tailing)
    sender.join()
    assert (arrived.message_id, arrived.content) == (later[0].message_id, "after")
    tailing.close()


def test_watch_sees_a_create_a_message_and_a_delete(client):
    needs(client.base_url, "changes")
    agent = new_agent()
    cursor = client.changes("latest").next_cursor
    session = client.create(agent)
    receipt = client.send(session.id, "hi")
    client.delete(session.id)
    changes = client.watch(cursor, agent_id=agent, wait=5)
    seen = [next(changes) for _ in range(3)]
    changes.close()
    assert [c.type for c in seen] == ["session.created", "message.created", "session.deleted"]
    assert {c.session_id for c in seen} == {session.id}
    assert seen[1].message_id == receipt.message_id
    assert seen[2].reason == "deleted"
    assert [c.seq for c in seen] == sorted(c.seq for c in seen)


@pytest.mark.server
@pytest.mark.parametrize("stream", [False, True], ids=["long-poll", "stream"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_watch_misses_nothing_across_a_server_restart(backend, stream, tmp_path, monkeypatch):
    # Backoff up to half a second, not 5 s: the watcher is back soon after the server.
    monkeypatch.setattr(retries, "WAIT_MAX", 0.5)
    env = {"BIND": f"127.0.0.1:{free_port()}", "WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "4"}
    base_url = f"http://{env['BIND']}"
    with new_database(backend, tmp_path) as url, SessionsClient(base_url) as client:
        env["DATABASE_URL"] = url
        process = start_gunicorn(tmp_path, **env)
        try:
            wait_for(f"{base_url}/health", process, tmp_path / "gunicorn.log")
            needs(base_url, "changes")
            agent, seen = new_agent(), []
            start = client.changes("latest").next_cursor
            changes = client.watch(start, agent_id=agent, stream=stream, wait=2)
            watcher = threading.Thread(target=lambda: seen.extend(islice(changes, 6)), daemon=True)
            watcher.start()
            before = [client.create(agent).id for _ in range(3)]
            _wait_until(lambda: len(seen) == 3)
            crash(process)  # the watcher's request is cut; it retries until the server is back
            process = start_gunicorn(tmp_path, **env)
            wait_for(f"{base_url}/health", process, tmp_path / "gunicorn.log")
            after = [client.create(agent).id for _ in range(3)]
            watcher.join(timeout=30)
            if not watcher.is_alive():
                changes.close()  # its stream, if any, ends: the server need not wait for it
        finally:
            stop(process)
    assert [change.session_id for change in seen] == before + after
    assert [change.seq for change in seen] == sorted({change.seq for change in seen})


def crash(process):
    """Kill a Gunicorn and its workers at once, as a crash would (no graceful stop)."""
    workers = worker_pids(process.pid)
    process.kill()
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def _wait_until(condition, timeout=15):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- watch's resumption, against answers the proxy makes up -----------------------------


def _change(seq, session_id="session-0sgqg1yr7y6hrsf7nb7vs55jvzr0", kind="session.created"):
    return {
        "seq": seq,
        "type": kind,
        "session_id": session_id,
        "agent_id": "a",
        "task_id": None,
        "status": "created",
        "version": 1,
        "at": "2026-11-30T06:00:00.000001Z",
    }


def _page(changes, next_cursor):
    body = json.dumps({"changes": changes, "next_cursor": next_cursor}).encode()
    return body, [("Content-Type", "application/json")]


def _events(*changes):
    text = "".join(
        f"id: {c['seq']}\nevent: {c['type']}\ndata: {json.dumps(c)}\n\n" for c in changes
    )
    return (": open\n\n" + text).encode(), [("Content-Type", "text/event-stream")]


def _gone():
    problem = {"status": 410, "title": "Gone", "detail": "Start again from cursor=latest."}
    return json.dumps(problem).encode(), [("Content-Type", "application/problem+json")]


@pytest.mark.server
def test_watch_takes_its_position_then_long_polls_from_each_next_cursor(proxy):
    proxy.answer("GET", "/api/changes", 200, *_page([], "40"))
    proxy.answer("GET", "/api/changes", 200, *_page([_change(41), _change(42)], "45"))
    proxy.answer("GET", "/api/changes", 502, b"bad gateway")
    proxy.answer("GET", "/api/changes", 200, *_page([_change(46)], "46"))
    proxy.answer("GET", "/api/changes", 410, *_gone())
    with SessionsClient(proxy.url) as through:
        changes = through.watch(agent_id="a", type=["session.created"], wait=3)
        assert [next(changes).seq for _ in range(3)] == [41, 42, 46]
        with pytest.raises(GoneError):
            next(changes)
    queries = [s.path.partition("?")[2] for s in proxy.requests_to("GET", "/api/changes")]
    common = "agent_id=a&type=session.created"
    assert queries == [
        f"{common}&cursor=latest",
        f"{common}&cursor=40&wait=3",
        f"{common}&cursor=45&wait=3",
        f"{common}&cursor=45&wait=3",  # the 502, retried
        f"{common}&cursor=46&wait=3",
    ]


@pytest.mark.server
def test_watch_as_a_stream_resumes_from_the_last_event(proxy):
    proxy.answer("GET", "/api/changes", 200, *_page([], "9"))
    proxy.answer("GET", "/api/changes", 200, *_events(_change(10), _change(11)))
    proxy.answer("GET", "/api/changes", 200, *_events(_change(12)))
    proxy.answer("GET", "/api/changes", 410, *_gone())
    with SessionsClient(proxy.url) as through:
        changes = through.watch(stream=True)
        assert [next(changes).seq for _ in range(3)] == [10, 11, 12]
        with pytest.raises(GoneError):
            next(changes)
    seen = proxy.requests_to("GET", "/api/changes")
    assert [s.headers.get("last-event-id") for s in seen] == [None, None, "11", "12"]
    assert [s.headers["accept"] for s in seen[1:]] == ["text/event-stream"] * 3
    assert seen[1].path.endswith("cursor=9")


@pytest.mark.server
def test_watch_as_a_stream_resumes_from_the_position_a_heartbeat_gave(proxy):
    """A heartbeat's id is past what the filters skipped: the reconnection starts there."""
    heartbeat = b": keep-alive\nid: 20\n\n"
    body, headers = _events(_change(10))
    proxy.answer("GET", "/api/changes", 200, *_page([], "9"))
    proxy.answer("GET", "/api/changes", 200, body + heartbeat, headers)
    proxy.answer("GET", "/api/changes", 200, *_events(_change(21)))
    proxy.answer("GET", "/api/changes", 410, *_gone())
    with SessionsClient(proxy.url) as through:
        changes = through.watch(stream=True, agent_id="a")
        assert [next(changes).seq for _ in range(2)] == [10, 21]
        with pytest.raises(GoneError):
            next(changes)
    seen = proxy.requests_to("GET", "/api/changes")
    assert [s.headers.get("last-event-id") for s in seen] == [None, None, "20", "21"]


def test_sessions_and_count_by_data_and_bulk_changes(client):
    agent = new_agent()
    made = [client.create(agent, data={"pr": n % 2, "labels": ["x"]}) for n in range(4)]
    found = [s.id for s in client.sessions(agent_id=agent, data={"pr": 1})]
    assert found == [made[3].id, made[1].id]
    assert client.count(agent_id=agent, data={"labels": ["x"]}).count == 4
    dry = client.bulk(agent_id=agent, data={"pr": 0}, set_status="paused", dry_run=True)
    assert (dry.matched, dry.changed, dry.dry_run, dry.by_status["created"]) == (2, 0, True, 2)
    done = client.bulk(agent_id=agent, set_status="paused", limit=3, idempotency_key="bulk-k1")
    again = client.bulk(agent_id=agent, set_status="paused", limit=3, idempotency_key="bulk-k1")
    assert (done.changed, done.remaining) == (3, 1) and again == done
    assert client.bulk(agent_id=agent, status=["created"], set_status="failed").changed == 1
    gone = client.bulk(agent_id=agent, delete=True)
    assert (gone.matched, gone.changed, gone.conflicts, gone.remaining) == (4, 4, 0, 0)
    with pytest.raises(TypeError):
        client.bulk(agent_id=agent, set_status="failed", delete=True)
