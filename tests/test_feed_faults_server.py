"""The change feed's faults on real Gunicorn: a client that stops reading its stream, the
prune command in the middle of a stream, and a change right after a stream or long poll
opens, through another worker."""

import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
import requests
from databases import BACKENDS, new_database
from servers import ROOT, serving

from sessions_app.timefmt import now_us

pytestmark = pytest.mark.server

FLASK = Path(sys.executable).parent / "flask"
#: A long agent id makes each event large, so that few fill a socket's buffers.
LONG_AGENT = "agent-" + "x" * 240


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path):
    with new_database(request.param, tmp_path) as url:
        yield url


def insert_changes(database_url, count, at, agent_id=LONG_AGENT):
    """Write ``count`` changes straight into the feed's table, as another host's writes would."""
    rows = [("session.created", f"s{n}", agent_id, "created", 1, at) for n in range(count)]
    sql = (
        "INSERT INTO changes (type, session_id, agent_id, status, version, at) "
        "VALUES (%s, %s, %s, %s, %s, %s)"
    )
    if database_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            conn.executemany(sql.replace("%s", "?"), rows)
        return
    with psycopg.connect(database_url) as conn, conn.cursor() as cursor:
        cursor.executemany(sql, rows)


def streams_held(base_url):
    text = requests.get(f"{base_url}/metrics", timeout=10).text
    found = re.findall(r'^sessions_waiting_requests\{kind="stream"\} ([0-9.e+]+)$', text, re.M)
    return float(found[0]) if found else 0.0


def open_raw_stream(base_url, path):
    """Open an event stream over HTTP/1.0 on a socket with a small receive buffer.

    HTTP/1.0: the body is the bare event stream, ended by closing.  The
    small buffer lets a client that stops reading fill the path quickly.
    """
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect((host, int(port)))
    sock.sendall(
        f"GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    received = b""
    while b"stream open" not in received:
        chunk = sock.recv(4096)
        assert chunk, received
        received += chunk
    return sock, received


def test_a_stream_whose_client_stops_reading_is_ended_and_its_slot_freed(tmp_path, database_url):
    with serving(
        tmp_path,
        DATABASE_URL=database_url,
        WEB_CONCURRENCY="1",
        STREAM_MAX_SECONDS="4",
        STREAM_HEARTBEAT_SECONDS="1",
    ) as (base_url, _):
        sock, _ = open_raw_stream(base_url, "/api/changes")
        began = time.monotonic()
        try:
            assert streams_held(base_url) == 1
            # About 10 MB of events: far more than the socket buffers hold.
            for _ in range(8):
                insert_changes(database_url, 2000, now_us())
            # The stream ends at STREAM_MAX_SECONDS though its client never reads again.
            while streams_held(base_url) and time.monotonic() < began + 15:
                time.sleep(0.2)
            freed_after = time.monotonic() - began
            assert streams_held(base_url) == 0, "the stuck stream still holds its slot"
            assert freed_after < 4 + 5, freed_after
            assert requests.get(f"{base_url}/health", timeout=10).status_code == 200
        finally:
            sock.close()


def test_prune_in_the_middle_of_a_stream_ends_it_rather_than_skip(tmp_path, database_url):
    with serving(
        tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY="1", STREAM_MAX_SECONDS="30"
    ) as (base_url, _):
        # An hour old: about 12 MB of events, more than the socket buffers hold.
        for _ in range(10):
            insert_changes(database_url, 2000, now_us() - 3600 * 1_000_000)
        insert_changes(database_url, 1000, now_us())
        sock, received = open_raw_stream(base_url, "/api/changes?cursor=0")
        try:
            # The client has read a few events; the server is held in its first page.
            time.sleep(0.5)
            pruned = subprocess.run(
                [str(FLASK), "--app", "sessions_app", "prune"],
                cwd=ROOT,
                env={"DATABASE_URL": database_url, "CHANGES_RETENTION_SECONDS": "60", "PATH": ""},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert pruned.returncode == 0, pruned.stderr
            while chunk := sock.recv(65536):
                received += chunk
        finally:
            sock.close()
        ids = [int(n) for n in re.findall(rb"^id: ([0-9]+)$", received, re.M)]
        events = [int(n) for n in re.findall(rb"^id: ([0-9]+)\nevent:", received, re.M)]
        assert events and events == list(range(1, len(events) + 1)), "no event after a gap"
        assert events[-1] <= 20_000, "nothing after the changes prune removed"
        assert ids[-1] == events[-1]
        resumed = requests.get(
            f"{base_url}/api/changes",
            headers={"Accept": "text/event-stream", "Last-Event-ID": str(events[-1])},
            timeout=10,
        )
        assert resumed.status_code == 410


def arrival(stream_lines, session_id, limit=10):
    end = time.monotonic() + limit
    for line in stream_lines:
        if session_id in line:
            return time.monotonic()
        assert time.monotonic() < end, "the change never came"
    raise AssertionError("the stream ended")


def test_a_change_right_after_a_stream_or_long_poll_opens_comes_at_once(tmp_path, database_url):
    """Through another worker: a watcher must already look when its waiter begins."""
    stream_waits, poll_waits = [], []
    with serving(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY="4") as (base_url, _):
        for n in range(12):
            with requests.get(
                f"{base_url}/api/changes",
                headers={"Accept": "text/event-stream"},
                stream=True,
                timeout=30,
            ) as response:
                lines = response.iter_lines(chunk_size=1, decode_unicode=True)
                assert next(lines).startswith(":")
                made = requests.post(f"{base_url}/api/sessions", json={"agent_id": f"s{n}"})
                acknowledged = time.monotonic()
                stream_waits.append(arrival(lines, made.json()["id"]) - acknowledged)
            start = requests.get(f"{base_url}/api/changes?cursor=latest", timeout=10).json()
            answer = {}

            def long_poll(cursor=start["next_cursor"], answer=answer):
                page = requests.get(
                    f"{base_url}/api/changes", params={"cursor": cursor, "wait": 10}, timeout=30
                )
                answer.update(at=time.monotonic(), page=page.json())

            poll = threading.Thread(target=long_poll)
            poll.start()
            time.sleep(0.01)
            made = requests.post(f"{base_url}/api/sessions", json={"agent_id": f"p{n}"})
            acknowledged = time.monotonic()
            poll.join()
            assert [c["session_id"] for c in answer["page"]["changes"]] == [made.json()["id"]]
            # A page may come before the writer has its answer: count that as no wait.
            poll_waits.append(max(0.0, answer["at"] - acknowledged))
    print(
        f"\nwake-up after opening: stream p50 {statistics.median(stream_waits) * 1000:.1f} ms, "
        f"max {max(stream_waits) * 1000:.1f} ms; long poll p50 "
        f"{statistics.median(poll_waits) * 1000:.1f} ms, max {max(poll_waits) * 1000:.1f} ms"
    )
    # Well under the idle watcher's one-second sleep, on a busy two-core machine.
    assert max(stream_waits) < 0.9, stream_waits
    assert max(poll_waits) < 0.9, poll_waits
