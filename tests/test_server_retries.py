"""Safe retries and safe concurrent edits on the real server: Gunicorn, 4 workers, one database.

Run with ``pytest -s -m server`` to see the figures.
"""

import contextlib
import socket
import threading
import time
import uuid
from collections import Counter

import pytest
import requests

pytestmark = pytest.mark.server

CLIENTS = 16
SAME_KEY_EACH = 20
INCREMENTS_EACH = 5


def backend(url):
    return url.split(":", 1)[0]


def at_once(work):
    """Run ``work(http, n)`` in CLIENTS threads started together; return their results."""
    results, start = [None] * CLIENTS, threading.Barrier(CLIENTS)

    def client(n):
        with requests.Session() as http:
            start.wait()
            results[n] = work(http, n)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def same_request_many_times(url, body, key):
    """Send one request SAME_KEY_EACH times from each client; return every answer."""

    def work(http, n):
        return [
            http.post(url, json=body, headers={"Idempotency-Key": key}, timeout=60)
            for _ in range(SAME_KEY_EACH)
        ]

    return [answer for answers in at_once(work) for answer in answers]


def assert_one_write(answers, label):
    statuses = Counter(answer.status_code for answer in answers)
    print(f"\n[{label}] {len(answers)} requests with one key: {dict(statuses)}")
    assert set(statuses) <= {201, 409}, statuses
    created = [answer for answer in answers if answer.status_code == 201]
    assert len({answer.content for answer in created}) == 1
    assert sum("Idempotent-Replayed" not in answer.headers for answer in created) == 1
    for conflict in (answer for answer in answers if answer.status_code == 409):
        assert "still being handled" in conflict.json()["detail"]
    return created[0].json()


def sessions_of(base_url, agent_id):
    response = requests.get(f"{base_url}/api/sessions", params={"agent_id": agent_id}, timeout=10)
    return response.json()["sessions"]


def test_the_same_create_at_once_makes_one_session(server, server_database_url):
    agent = f"same-create-{uuid.uuid4().hex[:8]}"
    answers = same_request_many_times(
        f"{server}/api/sessions", {"agent_id": agent, "data": {"n": 1}}, f"create-{agent}"
    )
    session = assert_one_write(answers, f"{backend(server_database_url)} create")
    assert [s["id"] for s in sessions_of(server, agent)] == [session["id"]]


def test_the_same_message_at_once_is_stored_once(server, server_database_url):
    session_id = requests.post(f"{server}/api/sessions", json={"agent_id": "m"}, timeout=10).json()[
        "id"
    ]
    answers = same_request_many_times(
        f"{server}/api/sessions/{session_id}/message", {"content": "once"}, f"msg-{session_id}"
    )
    receipt = assert_one_write(answers, f"{backend(server_database_url)} message")
    session = requests.get(f"{server}/api/sessions/{session_id}", timeout=10).json()
    assert session["message_count"] == 1 and session["version"] == 2
    listed = requests.get(f"{server}/api/sessions/{session_id}/messages", timeout=10).json()
    assert [m["message_id"] for m in listed["messages"]] == [receipt["message_id"]]


def test_patches_with_if_match_lose_no_update(server, server_database_url):
    """Each client adds 1 to its own key INCREMENTS_EACH times, retrying on 412."""
    url = (
        f"{server}/api/sessions/"
        + requests.post(f"{server}/api/sessions", json={"agent_id": "if-match"}, timeout=10).json()[
            "id"
        ]
    )

    def work(http, n):
        statuses = Counter()
        done = 0
        while done < INCREMENTS_EACH:
            read = http.get(url, timeout=60)
            count = read.json()["data"].get(f"client-{n}", 0)
            response = http.patch(
                url,
                json={"data": {f"client-{n}": count + 1}},
                headers={"If-Match": read.headers["ETag"]},
                timeout=60,
            )
            statuses[response.status_code] += 1
            if response.status_code == 200:
                done += 1
        return statuses

    began = time.perf_counter()
    statuses = sum(at_once(work), Counter())
    print(
        f"\n[{backend(server_database_url)}] {CLIENTS} clients x {INCREMENTS_EACH} increments "
        f"with If-Match: {dict(statuses)} in {time.perf_counter() - began:.2f}s"
    )
    assert set(statuses) <= {200, 412}, statuses
    session = requests.get(url, timeout=10).json()
    assert session["data"] == {f"client-{n}": INCREMENTS_EACH for n in range(CLIENTS)}
    assert session["version"] == statuses[200] + 1 == CLIENTS * INCREMENTS_EACH + 1


class CuttingProxy:
    """A TCP proxy that drops the client's connection when the first answer arrives.

    The answer has left the server, so the server has committed the write;
    the client never gets it, as when a connection breaks on the way back.
    Every later connection is passed through both ways.
    """

    def __init__(self, upstream):
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.cut = 0
        self.to_cut = 1
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        upstream = socket.create_connection(self.upstream)
        cutting, self.to_cut = self.to_cut > 0, self.to_cut - 1
        threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
        if cutting:
            if upstream.recv(65536):
                self.cut += 1
            _hang_up(client, upstream)
        else:
            _pump(upstream, client)

    def close(self):
        self.listener.close()


def _pump(source, target):
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        _hang_up(source, target)


def _hang_up(*sockets):
    # shutdown, not only close: it wakes a thread blocked reading the socket.
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def post_retrying(proxy, path, body, key):
    """POST once through ``proxy`` (the answer is lost), then again; return the second answer."""
    headers = {"Idempotency-Key": key, "Connection": "close"}
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{proxy.url}{path}", json=body, headers=headers, timeout=30)
    return requests.post(f"{proxy.url}{path}", json=body, headers=headers, timeout=30)


def test_a_retry_after_a_lost_answer_writes_nothing_twice(server):
    agent = f"lost-answer-{uuid.uuid4().hex[:8]}"
    proxy = CuttingProxy(server)
    try:
        created = post_retrying(proxy, "/api/sessions", {"agent_id": agent}, f"c-{agent}")
        proxy.to_cut = 1
        session_id = created.json()["id"]
        sent = post_retrying(
            proxy, f"/api/sessions/{session_id}/message", {"content": "x"}, f"m-{agent}"
        )
    finally:
        proxy.close()
    assert proxy.cut == 2  # both first answers reached the proxy: both writes committed
    assert created.status_code == sent.status_code == 201
    assert created.headers["Idempotent-Replayed"] == sent.headers["Idempotent-Replayed"] == "true"
    assert [s["id"] for s in sessions_of(server, agent)] == [session_id]
    session = requests.get(f"{server}/api/sessions/{session_id}", timeout=10).json()
    assert session["message_count"] == 1
    listed = requests.get(f"{server}/api/sessions/{session_id}/messages", timeout=10).json()
    assert [m["message_id"] for m in listed["messages"]] == [sent.json()["message_id"]]
