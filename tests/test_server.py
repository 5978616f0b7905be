"""The real server under concurrent clients: Gunicorn, 4 workers x 4 threads, one database.

Run with ``pytest -s -m server`` to see the figures (requests, errors, time).
"""

import random
import sqlite3
import threading
import time
from collections import Counter

import psycopg
import pytest
import requests

pytestmark = pytest.mark.server

CLIENTS = 16
MESSAGES_EACH = 50
PATCHES_EACH = 10
MIXED_OPS_EACH = 40


class Tally:
    """Statuses and failures of requests made by many threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.statuses = Counter()
        self.failures = []
        self.message_ids = []

    def record(self, response, expected=()):
        """Count ``response``; one not 2xx nor in ``expected`` is a failure."""
        with self.lock:
            self.statuses[response.status_code] += 1
            if not (200 <= response.status_code < 300 or response.status_code in expected):
                self.failures.append(f"{response.status_code} {response.text[:300]}")
            elif response.request.path_url.endswith("/message") and response.status_code == 201:
                self.message_ids.append(response.json()["message_id"])

    def fail(self, error):
        with self.lock:
            self.statuses["exception"] += 1
            self.failures.append(repr(error))

    @property
    def requests(self):
        return sum(self.statuses.values())


def run_clients(work, label, backend):
    """Run ``work(http, n, tally)`` in CLIENTS threads at once; print and return the tally."""
    tally = Tally()
    start = threading.Barrier(CLIENTS)

    def client(n):
        with requests.Session() as http:
            start.wait()
            try:
                work(http, n, tally)
            except requests.RequestException as error:
                tally.fail(error)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    print(
        f"\n[{backend}] {label}: {tally.requests} requests, {len(tally.failures)} errors, "
        f"{elapsed:.2f}s, {tally.requests / elapsed:.0f} req/s, statuses {dict(tally.statuses)}"
    )
    return tally


def create_session(base_url):
    response = requests.post(f"{base_url}/api/sessions", json={"agent_id": "LOAD"}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def listed_message_ids(base_url, session_id):
    """Follow next_cursor through a session's messages; return their ids in order."""
    ids, params = [], {"limit": 100}
    while True:
        response = requests.get(
            f"{base_url}/api/sessions/{session_id}/messages", params=params, timeout=10
        )
        assert response.status_code == 200, response.text
        page = response.json()
        ids += [message["message_id"] for message in page["messages"]]
        if page["next_cursor"] is None:
            return ids
        params["cursor"] = page["next_cursor"]


def get_session(base_url, session_id):
    response = requests.get(f"{base_url}/api/sessions/{session_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def send_messages(base_url, session_of):
    """Return a worker that sends MESSAGES_EACH messages to ``session_of(n)``."""

    def work(http, n, tally):
        url = f"{base_url}/api/sessions/{session_of(n)}/message"
        for k in range(MESSAGES_EACH):
            tally.record(http.post(url, json={"content": f"client {n} message {k}"}, timeout=60))

    return work


def test_messages_into_one_session(server, server_database_url):
    session_id = create_session(server)
    tally = run_clients(
        send_messages(server, lambda n: session_id),
        "16 clients x 50 messages into one session",
        server_database_url.split(":", 1)[0],
    )

    assert tally.failures == []
    assert tally.statuses[201] == CLIENTS * MESSAGES_EACH
    session = get_session(server, session_id)
    listed = listed_message_ids(server, session_id)
    assert session["message_count"] == tally.statuses[201] == len(listed)
    assert sorted(listed) == sorted(tally.message_ids)
    assert session["status"] == "active"


def test_messages_into_a_session_each(server, server_database_url):
    session_ids = [create_session(server) for _ in range(CLIENTS)]
    tally = run_clients(
        send_messages(server, lambda n: session_ids[n]),
        "16 clients x 50 messages, a session each",
        server_database_url.split(":", 1)[0],
    )

    assert tally.failures == []
    assert tally.statuses[201] == CLIENTS * MESSAGES_EACH
    listed = []
    for session_id in session_ids:
        ids = listed_message_ids(server, session_id)
        assert get_session(server, session_id)["message_count"] == len(ids) == MESSAGES_EACH
        listed += ids
    assert sorted(listed) == sorted(tally.message_ids)


def test_concurrent_data_patches_lose_no_key(server, server_database_url):
    session_id = create_session(server)

    def work(http, n, tally):
        url = f"{server}/api/sessions/{session_id}"
        for k in range(PATCHES_EACH):
            tally.record(http.patch(url, json={"data": {f"client{n}-{k}": k}}, timeout=60))

    tally = run_clients(
        work,
        "16 clients x 10 PATCHes of data on one session",
        server_database_url.split(":", 1)[0],
    )

    assert tally.failures == []
    assert tally.statuses[200] == CLIENTS * PATCHES_EACH
    data = get_session(server, session_id)["data"]
    assert data == {f"client{n}-{k}": k for n in range(CLIENTS) for k in range(PATCHES_EACH)}


def test_mixed_load_keeps_counts_equal_to_stored_messages(server, server_database_url):
    """Creates, messages, status moves and deletes at once: counts match the rows."""
    shared = [create_session(server) for _ in range(4)]
    sent_to = Counter()
    sent_lock = threading.Lock()

    def work(http, n, tally):
        rnd, own = random.Random(n), []
        for _ in range(MIXED_OPS_EACH):
            op = rnd.random()
            if op < 0.15 or not own:
                response = http.post(f"{server}/api/sessions", json={"agent_id": f"mixed{n % 3}"})
                if response.status_code == 201:
                    own.append(response.json()["id"])
            elif op < 0.55:
                target = rnd.choice(shared + own)
                response = http.post(
                    f"{server}/api/sessions/{target}/message", json={"content": "x"}
                )
                if response.status_code == 201:
                    with sent_lock:
                        sent_to[target] += 1
            elif op < 0.65:
                response = http.delete(f"{server}/api/sessions/{own.pop()}")
            elif op < 0.75:
                target = rnd.choice(own)
                status = rnd.choice(["paused", "completed", "failed"])
                response = http.patch(f"{server}/api/sessions/{target}", json={"status": status})
            elif op < 0.85:
                target = rnd.choice(shared)
                status = rnd.choice(["active", "paused"])
                response = http.patch(f"{server}/api/sessions/{target}", json={"status": status})
            else:
                response = http.get(f"{server}/api/sessions", params={"status": "active,paused"})
            # 409: a message or move refused because this client finished the session.
            tally.record(response, expected=(409,))

    tally = run_clients(
        work,
        "16 clients x 40 mixed creates, messages, PATCHes, deletes, lists",
        server_database_url.split(":", 1)[0],
    )

    assert tally.failures == []
    for session_id in shared:
        session = get_session(server, session_id)
        listed = listed_message_ids(server, session_id)
        assert session["message_count"] == sent_to[session_id] == len(listed)
    assert count_mismatches(server_database_url) == ([], 0)


def count_mismatches(database_url):
    """Return the sessions whose count is not their messages, and the orphan messages."""
    mismatched = """
        SELECT s.id, s.message_count, COUNT(m.seq), COALESCE(MAX(m.seq), 0)
        FROM sessions s LEFT JOIN messages m ON m.session_id = s.id
        GROUP BY s.id, s.message_count
        HAVING s.message_count <> COUNT(m.seq) OR s.message_count <> COALESCE(MAX(m.seq), 0)
    """
    orphans = """
        SELECT COUNT(*) FROM messages m
        WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = m.session_id)
    """
    if database_url.startswith("sqlite"):
        connection = sqlite3.connect(database_url.removeprefix("sqlite:///"))
    else:
        connection = psycopg.connect(database_url)
    try:
        return (
            connection.execute(mismatched).fetchall(),
            connection.execute(orphans).fetchone()[0],
        )
    finally:
        connection.close()
