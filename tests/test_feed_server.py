"""The change feed on real Gunicorn: exactly once under concurrent writers, wake-ups
across processes and hosts, streams over HTTP, and waiters that disconnect."""

import collections
import os
import random
import re
import socket
import threading
import time

import pytest
import requests
from databases import BACKENDS, new_database
from servers import serving

pytestmark = pytest.mark.server

WRITERS = 16
WRITE_SECONDS = float(os.environ.get("FEED_TEST_WRITE_SECONDS", "10"))


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path):
    """A database of its own, with no tables: the servers make them."""
    with new_database(request.param, tmp_path) as url:
        yield url


class Writer(threading.Thread):
    """Creates, messages, PATCHes and deletes its own sessions; counts what was acknowledged."""

    def __init__(self, base_url, until, seed):
        super().__init__()
        self.base_url, self.until = base_url, until
        self.random = random.Random(seed)
        self.acknowledged = collections.Counter()
        self.by_agent = collections.Counter()
        self.failures = []
        self.http = requests.Session()

    def run(self):
        mine, n = [], 0
        while time.monotonic() < self.until:
            n += 1
            action = self.random.random()
            try:
                if not mine or action < 0.25:
                    agent = self.random.choice(["alpha", "beta"])
                    response = self.http.post(
                        f"{self.base_url}/api/sessions", json={"agent_id": agent}, timeout=30
                    )
                    self.check(response, 201, "session.created", agent)
                    mine.append((response.json()["id"], agent))
                elif action < 0.7:
                    session_id, agent = self.random.choice(mine)
                    response = self.http.post(
                        f"{self.base_url}/api/sessions/{session_id}/message",
                        json={"content": f"m{n}"},
                        timeout=30,
                    )
                    self.check(response, 201, "message.created", agent)
                elif action < 0.9:
                    session_id, agent = self.random.choice(mine)
                    response = self.http.patch(
                        f"{self.base_url}/api/sessions/{session_id}",
                        json={"data": {"n": n}},
                        timeout=30,
                    )
                    self.check(response, 200, "session.updated", agent)
                else:
                    session_id, agent = mine.pop(self.random.randrange(len(mine)))
                    response = self.http.delete(
                        f"{self.base_url}/api/sessions/{session_id}", timeout=30
                    )
                    self.check(response, 204, "session.deleted", agent)
            except requests.RequestException as exc:
                self.failures.append(repr(exc))

    def check(self, response, status, kind, agent):
        if response.status_code == status:
            self.acknowledged[kind] += 1
            self.by_agent[(kind, agent)] += 1
        else:
            self.failures.append((response.status_code, response.text))


class Follower(threading.Thread):
    """Follows the feed with long polls until told to stop and caught up."""

    def __init__(self, base_url, **filters):
        super().__init__()
        self.base_url, self.filters = base_url, filters
        self.seen = []
        self.stop = threading.Event()
        self.errors = []
        self.start_cursor = requests.get(
            f"{base_url}/api/changes", params={"cursor": "latest"}, timeout=10
        ).json()["next_cursor"]

    def run(self):
        http, cursor = requests.Session(), self.start_cursor
        while True:
            stopping = self.stop.is_set()
            response = http.get(
                f"{self.base_url}/api/changes",
                params={"cursor": cursor, "wait": 1 if stopping else 2, **self.filters},
                timeout=30,
            )
            if response.status_code != 200:
                self.errors.append((response.status_code, response.text))
                return
            page = response.json()
            self.seen += page["changes"]
            cursor = page["next_cursor"]
            if stopping and not page["changes"]:
                return


def test_every_change_reaches_each_follower_exactly_once_in_order(tmp_path, database_url):
    with serving(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY="4") as (base_url, _):
        everyone = Follower(base_url)
        alphas = Follower(base_url, agent_id="alpha", type="message.created,session.deleted")
        for follower in (everyone, alphas):
            follower.start()
        until = time.monotonic() + WRITE_SECONDS
        writers = [Writer(base_url, until, seed) for seed in range(WRITERS)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        for follower in (everyone, alphas):
            follower.stop.set()
        for follower in (everyone, alphas):
            follower.join(60)
            assert not follower.is_alive()
            assert follower.errors == []
    assert [f for w in writers for f in w.failures] == []
    acknowledged = sum((w.acknowledged for w in writers), collections.Counter())
    by_agent = sum((w.by_agent for w in writers), collections.Counter())
    assert sum(acknowledged.values()) > 100, "the writers must have written something"

    seqs = [c["seq"] for c in everyone.seen]
    assert seqs == sorted(set(seqs)), "in seq order, each once"
    assert collections.Counter(c["type"] for c in everyone.seen) == acknowledged

    alpha_seqs = [c["seq"] for c in alphas.seen]
    assert alpha_seqs == sorted(set(alpha_seqs))
    assert {c["agent_id"] for c in alphas.seen} <= {"alpha"}
    assert collections.Counter(c["type"] for c in alphas.seen) == {
        kind: by_agent[(kind, "alpha")] for kind in ("message.created", "session.deleted")
    }
    assert [
        c
        for c in everyone.seen
        if c["agent_id"] == "alpha" and c["type"] in ("message.created", "session.deleted")
    ] == alphas.seen


@pytest.mark.skipif("postgresql" not in BACKENDS, reason="TEST_DATABASE_URL is not set")
def test_a_waiter_on_one_instance_is_woken_by_a_write_through_another(tmp_path):
    with new_database("postgresql", tmp_path) as url:
        woken_across_instances(tmp_path, url)


def woken_across_instances(tmp_path, url):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        serving(tmp_path / "a", DATABASE_URL=url, WEB_CONCURRENCY="1") as (first, _),
        serving(tmp_path / "b", DATABASE_URL=url, WEB_CONCURRENCY="1") as (second, _),
    ):
        start = requests.get(f"{first}/api/changes?cursor=latest", timeout=10).json()
        answer = {}

        def wait():
            began = time.monotonic()
            answer["page"] = requests.get(
                f"{first}/api/changes",
                params={"cursor": start["next_cursor"], "wait": 20, "agent_id": "via-b"},
                timeout=40,
            ).json()
            answer["waited"] = time.monotonic() - began

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(1)
        made = requests.post(f"{second}/api/sessions", json={"agent_id": "via-b"}, timeout=10)
        waiter.join()
    assert [c["session_id"] for c in answer["page"]["changes"]] == [made.json()["id"]]
    assert answer["waited"] < 20, "woken by the write, not by the end of the wait"


def test_a_long_poll_over_http_waits_its_time_when_nothing_comes(tmp_path, database_url):
    with serving(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY="1") as (base_url, _):
        began = time.monotonic()
        page = requests.get(f"{base_url}/api/changes?cursor=latest&wait=3", timeout=20).json()
        waited = time.monotonic() - began
    assert page == {"changes": [], "next_cursor": "0"}
    assert 3 <= waited < 8


def test_a_message_wait_is_woken_by_a_message_through_another_worker(tmp_path, database_url):
    with serving(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY="2") as (base_url, _):
        session = requests.post(f"{base_url}/api/sessions", json={"agent_id": "a"}).json()
        answer = {}
        waiter = threading.Thread(
            target=lambda: answer.update(
                requests.get(
                    f"{base_url}/api/sessions/{session['id']}/messages",
                    params={"wait": 20},
                    timeout=40,
                ).json()
            )
        )
        waiter.start()
        time.sleep(1)
        # New connections land on either worker: send a few.
        for n in range(3):
            requests.post(
                f"{base_url}/api/sessions/{session['id']}/message", json={"content": f"m{n}"}
            )
        waiter.join()
    assert answer["messages"][0]["content"] == "m0"
    assert answer["next_cursor"] == str(len(answer["messages"]))


def read_events(lines, count, seconds):
    """Read ``lines`` of a stream until ``count`` blank-line-ended blocks or ``seconds`` pass."""
    blocks, block, end = [], [], time.monotonic() + seconds
    for line in lines:
        if line == "":
            blocks.append(block)
            block = []
            if len(blocks) >= count or time.monotonic() > end:
                break
        else:
            block.append(line)
    return blocks


def test_a_stream_over_http_opens_at_once_carries_events_and_heartbeats(tmp_path, database_url):
    with serving(
        tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY="2", STREAM_HEARTBEAT_SECONDS="1"
    ) as (base_url, _):
        began = time.monotonic()
        with requests.get(
            f"{base_url}/api/changes",
            headers={"Accept": "text/event-stream"},
            stream=True,
            timeout=10,
        ) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            # One byte at a time: a larger read would wait for more than is sent.
            lines = response.iter_lines(chunk_size=1, decode_unicode=True)
            (opening,) = read_events(lines, 1, 5)
            assert opening[0].startswith(":")
            assert time.monotonic() - began < 5, "the stream opens before any change"
            made = requests.post(f"{base_url}/api/sessions", json={"agent_id": "a"}).json()
            blocks = read_events(lines, 3, 10)
    events = [b for b in blocks if not b[0].startswith(":")]
    heartbeats = [b for b in blocks if b[0].startswith(":")]
    assert len(events) == 1 and made["id"] in events[0][2]
    assert events[0][1] == "event: session.created"
    assert heartbeats, "a quiet stream sends comments"


def waiting_now(base_url):
    text = requests.get(f"{base_url}/metrics", timeout=10).text
    found = re.findall(r'^sessions_waiting_requests\{kind="poll"\} ([0-9.e+]+)$', text, re.M)
    return float(found[0]) if found else 0.0


def test_waiters_that_disconnect_free_their_slots(tmp_path, database_url):
    """1,000 long polls whose clients hang up, 200 at a time: no slot stays taken."""
    with serving(
        tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY="1", FEED_WAITERS_MAX="200"
    ) as (base_url, _):
        host, port = base_url.removeprefix("http://").split(":")
        request = (
            f"GET /api/changes?cursor=latest&wait=60 HTTP/1.1\r\nHost: {host}\r\n\r\n"
        ).encode()
        for _round in range(5):
            clients = []
            for _ in range(200):
                client = socket.create_connection((host, int(port)))
                client.sendall(request)
                clients.append(client)
            deadline = time.monotonic() + 20
            while waiting_now(base_url) < 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert waiting_now(base_url) == 200
            for client in clients:
                client.close()
            deadline = time.monotonic() + 10
            while waiting_now(base_url) > 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert waiting_now(base_url) == 0, "every slot is given back"
        # ...and the house takes a waiter again.
        page = requests.get(f"{base_url}/api/changes?cursor=latest&wait=1", timeout=10)
        assert page.status_code == 200


def test_a_stopping_worker_ends_its_streams_and_long_polls_at_once(tmp_path, database_url):
    """SIGTERM: the stream ends and the long poll answers, well before the graceful timeout."""
    with serving(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY="1") as (base_url, master):
        answer = {}
        poll = threading.Thread(
            target=lambda: answer.update(
                requests.get(f"{base_url}/api/changes?cursor=latest&wait=60", timeout=90).json()
            )
        )
        poll.start()
        with requests.get(
            f"{base_url}/api/changes",
            headers={"Accept": "text/event-stream"},
            stream=True,
            timeout=90,
        ) as response:
            lines = response.iter_lines(chunk_size=1, decode_unicode=True)
            assert read_events(lines, 1, 5)[0][0].startswith(":")
            time.sleep(1)  # the long poll is waiting too
            began = time.monotonic()
            master.terminate()
            rest = list(lines)  # returns once the server ends the stream
            ended = time.monotonic() - began
            poll.join(30)
            assert master.wait(30) == 0
            stopped = time.monotonic() - began
    # No event: comments, and the position read up to.
    assert all(not line or line.startswith((":", "id: ")) for line in rest), rest
    assert answer["changes"] == [] and answer["next_cursor"].isdigit()
    # Gunicorn's graceful timeout is 30 s: without the stop, both waited it out.
    assert ended < 10 and stopped < 15, (ended, stopped)
