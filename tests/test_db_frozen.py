"""A real server whose PostgreSQL freezes (TCP up, no bytes): 503s within a bound, then recovery.

Gunicorn (2 workers x 4 threads) reaches the test database through a proxy
that stops forwarding bytes but keeps every socket open, as a server that
hangs would.  Every request that needs data answers 503 with Retry-After
within ``BOUND`` seconds, ``/metrics`` keeps answering meanwhile, and once
the proxy forwards again writes succeed on the same workers.

The bound: a round trip on an open connection gets
``DATABASE_STATEMENT_TIMEOUT_MS`` plus a second (3 + 1 s here), the ping of a
pooled connection, or else the opening of a new one,
``DATABASE_CONNECT_TIMEOUT`` (3 s; see sessions_app/deadlines.py): a request
answers within about 4 s here, 3 s (11 s if it was mid-statement) with the
default settings.
"""

import os
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from faultproxy import FreezingTcpProxy
from servers import require, serving, worker_pids

pytestmark = pytest.mark.server

URL = os.environ.get("TEST_DATABASE_URL", "")
require(URL.startswith("postgres"), "TEST_DATABASE_URL does not name a PostgreSQL database")

# Seconds: twice the ~4 s above (a request may wait for a worker's thread
# behind another: 8 at once on 2 x 4 threads, unevenly spread), and room.
BOUND = 10
WORKERS = 2
DATA = [
    ("GET", "/health", {}),
    ("GET", "/api/sessions", {}),
    ("POST", "/api/sessions", {"json": {"agent_id": "frozen"}}),
    ("GET", "/api/changes", {}),
]


@pytest.fixture
def proxy():
    parts = urlsplit(URL)
    proxy = FreezingTcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    user, at, _ = parts.netloc.rpartition("@")
    proxy.url = urlunsplit(parts._replace(netloc=f"{user}{at}127.0.0.1:{proxy.port}"))
    yield proxy
    proxy.close()


@pytest.fixture
def server(proxy):
    with (
        tempfile.TemporaryDirectory(prefix="sessions-frozen-") as folder,
        serving(
            Path(folder),
            DATABASE_URL=proxy.url,
            WEB_CONCURRENCY=str(WORKERS),
            GUNICORN_THREADS="4",
            DATABASE_STATEMENT_TIMEOUT_MS="3000",
        ) as (base, gunicorn),
    ):
        yield base, gunicorn, Path(folder) / "gunicorn.log"


def call(base, method, path, **kwargs):
    """Return ``(status or exception name, Retry-After, seconds)``."""
    started = time.monotonic()
    try:
        response = requests.request(method, base + path, timeout=BOUND, **kwargs)
    except requests.RequestException as exc:
        return type(exc).__name__, None, time.monotonic() - started
    return response.status_code, response.headers.get("Retry-After"), time.monotonic() - started


def all_at_once(base, calls):
    answers = [None] * len(calls)

    def one(n, method, path, kwargs):
        answers[n] = call(base, method, path, **kwargs)

    threads = [threading.Thread(target=one, args=(n, *c)) for n, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_a_frozen_database_is_503s_within_the_bound_then_writes_succeed(proxy, server):
    base, gunicorn, log_path = server
    # Every thread of both workers has a pooled connection to ping.
    warm = all_at_once(base, [("POST", "/api/sessions", {"json": {"agent_id": "warm"}})] * 16)
    assert {status for status, _, _ in warm} == {201}, warm
    workers = worker_pids(gunicorn.pid)
    assert len(workers) == WORKERS

    proxy.freeze()
    metrics = []
    watching = threading.Event()

    def watch_metrics():
        while not watching.is_set():
            metrics.append(call(base, "GET", "/metrics"))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_metrics)
    watcher.start()
    try:
        first = all_at_once(base, DATA * 2)
        second = all_at_once(base, DATA * 2)
    finally:
        watching.set()
        watcher.join()
        proxy.thaw()

    print(f"\n[frozen] slowest 503: {max(took for _, _, took in first + second):.2f} s")
    assert [(status, retry) for status, retry, _ in first + second] == [(503, "2")] * 16, (
        first + second
    )
    assert metrics and {status for status, _, _ in metrics} == {200}, metrics

    created = None
    for _ in range(10):
        created = call(base, "POST", "/api/sessions", json={"agent_id": "after"})
        if created[0] == 201:
            break
        time.sleep(0.5)
    assert created[0] == 201, created
    assert {status for status, _, _ in all_at_once(base, DATA * 2)} <= {200, 201}
    assert worker_pids(gunicorn.pid) == workers, "workers were restarted"
    assert "Traceback" not in log_path.read_text()
