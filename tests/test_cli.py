"""The ``sessions`` command: click's runner for the command, a real Gunicorn behind it."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from faultproxy import FaultProxy
from live import needs, new_agent
from servers import free_port

from sessions_app.client import SessionsClient
from sessions_app.client.cli import EXIT_API_ERROR, EXIT_INTERRUPTED, EXIT_UNREACHABLE, main

pytestmark = pytest.mark.server


@pytest.fixture
def sessions(live_server):
    """Run ``sessions --url <server> ARGS...``; return click's result."""
    runner = CliRunner()

    def run(*args, expect=0, input=None):
        result = runner.invoke(main, ["--url", live_server, *args], input=input)
        assert result.exit_code == expect, (result.stdout, result.stderr, result.exception)
        return result

    return run


@pytest.fixture
def client(live_server):
    with SessionsClient(live_server) as client:
        yield client


def json_of(result):
    return json.loads(result.stdout)


def test_create_and_show(sessions):
    agent = new_agent()
    created = json_of(
        sessions(
            "create",
            "--agent",
            agent,
            "--task",
            "t1",
            "--prompt",
            "Go",
            "--data",
            '{"m": 1}',
            "--json",
        )
    )
    assert (created["agent_id"], created["task_id"], created["prompt"], created["data"]) == (
        agent,
        "t1",
        "Go",
        {"m": 1},
    )
    assert json_of(sessions("show", created["id"], "--json")) == created
    shown = sessions("show", created["id"]).stdout.splitlines()
    assert shown[0].split() == ["id", created["id"]]
    assert ["agent", agent] in [line.split() for line in shown]
    assert 'data         {"m": 1}' in shown


def test_create_prints_the_session_readably(sessions):
    agent = new_agent()
    lines = sessions("create", "--agent", agent).stdout.splitlines()
    assert [line.split()[0] for line in lines] == [
        "id",
        "agent",
        "task",
        "status",
        "messages",
        "created",
        "last",
        *(["version"] if len(lines) == 10 else []),
        "prompt",
        "data",
    ]
    assert lines[3].split() == ["status", "created"]


def test_send_and_messages(sessions, client):
    session = client.create(new_agent())
    sent = sessions("send", session.id, "hello there").stdout
    assert sent.startswith("Sent msg-") and f" to {session.id} at " in sent
    receipt = json_of(sessions("send", session.id, "two\nlines", "--role", "assistant", "--json"))
    assert receipt["status"] == "sent"
    sessions("send", session.id, "-", input="from stdin")
    listed = json_of(sessions("messages", session.id, "--json"))
    assert [(m["role"], m["content"]) for m in listed] == [
        ("user", "hello there"),
        ("assistant", "two\nlines"),
        ("user", "from stdin"),
    ]
    text = sessions("messages", session.id).stdout.splitlines()
    assert text[0].endswith("  user       hello there")
    assert text[1].endswith("  assistant  two") and text[2].strip() == "lines"


def test_messages_last(sessions, client, live_server):
    needs(live_server, "messages_order")
    session = client.create(new_agent())
    for n in range(5):
        client.send(session.id, f"m{n}")
    last = json_of(sessions("messages", session.id, "--last", "2", "--json"))
    assert [m["content"] for m in last] == ["m3", "m4"]


def test_update_and_delete(sessions, client):
    session = client.create(new_agent(), data={"a": 1, "b": 2})
    updated = json_of(
        sessions("update", session.id, "--status", "paused", "--data", '{"a": null}', "--json")
    )
    assert (updated["status"], updated["data"]) == ("paused", {"b": 2})
    assert sessions("delete", session.id).stdout == f"Deleted {session.id}\n"
    gone = sessions("show", session.id, expect=EXIT_API_ERROR)
    assert gone.stdout == ""
    assert gone.stderr.startswith(f"Error: 404 Not Found: No session has the id '{session.id}'.")
    assert "request id " in gone.stderr


def test_update_if_match(sessions, client, live_server):
    needs(live_server, "versions")
    session = client.create(new_agent())
    stale = sessions(
        "update", session.id, "--status", "active", "--if-match", "7", expect=EXIT_API_ERROR
    )
    assert stale.stderr.startswith("Error: 412 ")
    moved = json_of(
        sessions("update", session.id, "--status", "active", "--if-match", "1", "--json")
    )
    assert moved["version"] == 2
    assert sessions("delete", session.id, "--if-match", "2", "--json").stdout


def test_list_as_a_table_and_as_json(sessions, client):
    agent = new_agent()
    made = [client.create(agent, task_id=f"t{n}") for n in range(3)]
    client.update(made[0].id, status="paused")
    rows = sessions("list", "--agent", agent).stdout.splitlines()
    assert rows[0].split() == ["ID", "AGENT", "TASK", "STATUS", "MSGS", "CREATED", "LAST", "ACTIVE"]
    assert [row.split()[:5] for row in rows[1:]] == [
        [s.id, agent, s.task_id, "paused" if s is made[0] else "created", "0"]
        for s in reversed(made)
    ]
    listed = json_of(
        sessions("list", "--agent", agent, "--status", "paused", "--status", "failed", "--json")
    )
    assert [s["id"] for s in listed] == [made[0].id]
    assert len(json_of(sessions("list", "--agent", agent, "--limit", "2", "--json"))) == 2
    assert len(json_of(sessions("list", "--agent", agent, "--all", "--json"))) == 3


def test_list_since(sessions, client, live_server):
    needs(live_server, "time_filters")
    agent = new_agent()
    client.create(agent)
    assert len(json_of(sessions("list", "--agent", agent, "--since", "1h", "--json"))) == 1
    assert json_of(sessions("list", "--agent", agent, "--until", "1h", "--json")) == []


def test_count(sessions, client, live_server):
    needs(live_server, "count")
    agent = new_agent()
    client.update(client.create(agent).id, status="failed")
    client.create(agent)
    counted = json_of(sessions("count", "--agent", agent, "--json"))
    assert (counted["count"], counted["by_status"]["failed"], counted["by_status"]["created"]) == (
        2,
        1,
        1,
    )
    table = [line.split() for line in sessions("count", "--agent", agent).stdout.splitlines()]
    assert table[0] == ["STATUS", "SESSIONS"] and table[-1] == ["total", "2"]
    assert ["failed", "1"] in table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "--agent", ""], "agent_id: Length must be between 1 and 255."),
        (["update", "session-0sgqg1yr7y6hrsf7nb7vs55jvzr0", "--status", "active"], "404 Not Found"),
        (["send", "session-0sgqg1yr7y6hrsf7nb7vs55jvzr0", "hi"], "No session has the id"),
    ],
)
def test_an_error_answer_exits_1_with_its_detail(sessions, args, message):
    result = sessions(*args, expect=EXIT_API_ERROR)
    assert message in result.stderr and result.stdout == ""


def test_a_conflict_exits_1_naming_the_status(sessions, client):
    session = client.create(new_agent())
    client.update(session.id, status="completed")
    result = sessions("update", session.id, "--status", "active", expect=EXIT_API_ERROR)
    assert (
        "Error: 409 Conflict: The session is completed and cannot move to active." in result.stderr
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "--agent", "a", "--data", "[1]"], "must be a JSON object"),
        (["create", "--agent", "a", "--data", "{"], "not JSON"),
        (["update", "x", "--status", "Active"], "'Active' is not one of"),
        (["list", "--since", "yesterday"], "neither RFC 3339 nor an age"),
        (["list", "--since", "2026-01-01T00:00:00"], "has no offset"),
    ],
)
def test_bad_options_exit_2_before_any_request(sessions, args, message):
    assert message in sessions(*args, expect=2).stderr


def test_no_url_is_a_usage_error(monkeypatch):
    monkeypatch.delenv("SESSIONS_API_URL", raising=False)
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 2 and "SESSIONS_API_URL" in result.stderr


def test_the_url_and_token_come_from_the_environment(live_server):
    parts = urlsplit(live_server)
    with FaultProxy((parts.hostname, parts.port)) as proxy:
        env = {"SESSIONS_API_URL": proxy.url, "SESSIONS_API_TOKEN": "tok-1"}
        result = CliRunner().invoke(main, ["list", "--json", "--limit", "1"], env=env)
    assert result.exit_code == 0 and isinstance(json.loads(result.stdout), list)
    (seen,) = proxy.requests_to("GET", "/api/sessions")
    assert seen.headers["authorization"] == "Bearer tok-1"


def test_an_unreachable_service_exits_3():
    result = CliRunner().invoke(main, ["--url", f"http://127.0.0.1:{free_port()}", "show", "x"])
    assert result.exit_code == EXIT_UNREACHABLE
    assert "cannot reach the service" in result.stderr and "Retrying in" in result.stderr


# -- watch and tail, as a person runs them --------------------------------------------


def _spawn(*args, env=None):
    sessions = Path(sys.executable).parent / "sessions"
    return subprocess.Popen(
        [str(sessions), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _interrupt(process):
    """Press Ctrl-C in ``process``; return its exit status (None if SIGINT cannot reach it)."""
    # A child inherits an ignored SIGINT (a test run started in the background):
    # then Ctrl-C cannot be shown, and the process is terminated instead.
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    with process:
        if ignored:
            process.terminate()
        else:
            process.send_signal(signal.SIGINT)
        status = process.wait(timeout=10)
    return None if ignored else status


def _read_lines(process, count, timeout=20):
    """Read ``count`` lines of ``process``'s stdout, failing after ``timeout`` seconds."""
    lines = []
    reader = threading.Thread(
        target=lambda: lines.extend(process.stdout.readline() for _ in range(count))
    )
    reader.daemon = True
    reader.start()
    reader.join(timeout)
    return lines


@pytest.mark.parametrize("how", [[], ["--stream"]], ids=["long-poll", "stream"])
def test_sessions_watch_shows_changes_made_elsewhere_live(live_server, client, how):
    needs(live_server, "changes")
    agent = new_agent()
    cursor = client.changes("latest").next_cursor
    watching = _spawn(
        "--url", live_server, "watch", "--agent", agent, "--cursor", cursor, "--json", *how
    )
    try:
        session = client.create(agent)
        first = _read_lines(watching, 1)
        receipt = client.send(session.id, "hi")
        second = _read_lines(watching, 1)
        client.delete(session.id)
        third = _read_lines(watching, 1)
    finally:
        status = _interrupt(watching)
    events = [json.loads(line) for line in first + second + third]
    assert [(e["type"], e["session_id"]) for e in events] == [
        ("session.created", session.id),
        ("message.created", session.id),
        ("session.deleted", session.id),
    ]
    assert events[1]["message_id"] == receipt.message_id
    assert status in (EXIT_INTERRUPTED, None)


def test_sessions_tail_shows_new_messages(live_server, client):
    needs(live_server, "messages_wait")
    session = client.create(new_agent())
    client.send(session.id, "earlier")
    tailing = _spawn("--url", live_server, "tail", session.id)
    try:
        first = _read_lines(tailing, 1)
        client.send(session.id, "later", role="assistant")
        second = _read_lines(tailing, 1)
    finally:
        status = _interrupt(tailing)
    assert first[0].rstrip().endswith("user       earlier")
    assert second[0].rstrip().endswith("assistant  later")
    assert status in (EXIT_INTERRUPTED, None)


def test_watch_waits_for_an_unreachable_service_until_interrupted():
    watching = _spawn("--url", f"http://127.0.0.1:{free_port()}", "watch")
    try:
        said = []
        reader = threading.Thread(
            target=lambda: said.append(watching.stderr.readline()), daemon=True
        )
        reader.start()
        reader.join(20)
        assert watching.poll() is None  # still trying
    finally:
        status = _interrupt(watching)
    assert said[0].startswith("Retrying in ") and "Connection refused" in said[0]
    assert status in (EXIT_INTERRUPTED, None)


def test_watch_prints_each_change_until_the_feed_says_gone(live_server):
    changes = [
        {"seq": 8, "type": "session.created", "session_id": "session-a", "agent_id": "a",
         "task_id": None, "status": "created", "version": 1, "at": "2026-11-30T06:00:00.5Z"},
        {"seq": 9, "type": "message.created", "session_id": "session-a", "agent_id": "a",
         "task_id": None, "status": "active", "version": 2, "at": "2026-11-30T06:00:01Z",
         "message_id": "msg-b", "role": "user"},
    ]  # fmt: skip
    page = json.dumps({"changes": changes, "next_cursor": "9"}).encode()
    gone = json.dumps({"status": 410, "title": "Gone", "detail": "List again."}).encode()
    parts = urlsplit(live_server)
    outputs = []
    for args in (["watch", "--cursor", "7"], ["watch", "--cursor", "7", "--json"]):
        with FaultProxy((parts.hostname, parts.port)) as proxy:
            proxy.answer("GET", "/api/changes", 200, page, [("Content-Type", "application/json")])
            proxy.answer("GET", "/api/changes", 410, gone)
            outputs.append(CliRunner().invoke(main, ["--url", proxy.url, *args]))
    text, as_json = outputs
    assert (text.exit_code, as_json.exit_code) == (EXIT_API_ERROR, EXIT_API_ERROR)
    assert text.stdout.splitlines() == [
        "2026-11-30 06:00:00  session.created  session-a  created",
        "2026-11-30 06:00:01  message.created  session-a  active  msg-b (user)",
    ]
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == changes
    assert text.stderr == "Error: 410 Gone: List again.\n"


def test_without_the_client_extra_the_import_says_what_to_install():
    code = "import sys; sys.modules['httpx'] = None; from sessions_app.client.cli import main"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == (
        "ModuleNotFoundError: sessions_app.client needs httpx: pip install 'sessions_app[client]'"
    )


def test_list_and_count_by_data(sessions, client):
    agent = new_agent()
    wanted = client.create(agent, data={"pr": 42, "repo": "api"})
    client.create(agent, data={"pr": 7})
    listed = json_of(sessions("list", "--agent", agent, "--data", '{"pr": 42}', "--json"))
    assert [s["id"] for s in listed] == [wanted.id]
    counted = json_of(sessions("count", "--data", '{"pr": 42, "repo": "api"}', "--json"))
    assert counted["count"] >= 1
    result = sessions("list", "--data", "[42]", expect=2)
    assert "must be a JSON object" in result.stderr


def test_bulk_dry_run_then_change_then_delete(sessions, client):
    agent = new_agent()
    made = [client.create(agent) for _ in range(3)]
    client.update(made[0].id, status="completed")
    args = ("bulk", "--agent", agent, "--active-before", "0s", "--status", "failed")
    dry = sessions(*args, "--dry-run").stdout.splitlines()
    assert dry[0] == "Would change 2 sessions (moved to failed); 0 more."
    assert ["created", "2"] in [line.split() for line in dry]
    assert sessions(*args, "--limit", "1").stdout == (
        "2 of 2 sessions moved to failed, 0 skipped (their status forbade it); 0 remain.\n"
    )
    assert [client.get(s.id).status for s in made] == ["completed", "failed", "failed"]
    only = ("bulk", "--agent", agent, "--in-status", "failed", "--delete", "--json", "--once")
    deleted = json_of(sessions(*only))
    assert (deleted["matched"], deleted["changed"], deleted["remaining"]) == (2, 2, 0)
    sessions("bulk", "--agent", agent, "--delete")
    assert client.count(agent_id=agent).count == 0
    refused = sessions("bulk", "--delete", expect=2)
    assert "give a filter, or --all" in refused.stderr
