"""Writes across a fleet: one and two instances on one PostgreSQL, each over a slow network.

Each instance (4 workers x 4 threads: 16 connections) reaches PostgreSQL
through its own proxy adding ``BENCH_NET_DELAY_MS`` (2) each way, as hosts
on a network would; 16 closed-loop clients per instance create sessions for
``BENCH_SECONDS`` (10).  With a lock every write of every host takes from
its change's insert to COMMIT, a second instance buys almost nothing: the
lock is held across network round trips.  The figure to read is the ratio
of two instances to one.

    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python -m benchmarks.fleet
"""

import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from .servers import ROOT, Client, Server

# The tests' delaying proxy: one implementation for both.
sys.path.insert(0, str(ROOT / "tests"))
from netdelay import DelayProxy  # noqa: E402

CLIENTS_PER_INSTANCE = 16
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
DELAY = float(os.environ.get("BENCH_NET_DELAY_MS", "2")) / 1000


def drive(servers, seconds):
    """Create sessions, 16 clients per server, for ``seconds``; return (count, times, errors)."""
    latencies, errors, lock = [], [], threading.Lock()
    end = time.monotonic() + seconds

    def client(port):
        http, mine = Client(port), []
        while time.monotonic() < end:
            began = time.monotonic()
            try:
                status, _ = http.call("POST", "/api/sessions", {"agent_id": "bench"})
            except OSError as exc:
                status, http = repr(exc), Client(port)
            took = time.monotonic() - began
            (mine if status == 201 else errors).append(took if status == 201 else status)
        with lock:
            latencies.extend(mine)

    threads = [
        threading.Thread(target=client, args=(server.port,))
        for server in servers
        for _ in range(CLIENTS_PER_INSTANCE)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies), latencies, errors


def run(database_url, instances, workdir):
    upstream = urlsplit(database_url)
    proxies = [DelayProxy((upstream.hostname, upstream.port), DELAY) for _ in range(instances)]
    servers = []
    try:
        for n, proxy in enumerate(proxies):
            os.environ.update(WEB_CONCURRENCY="4", GUNICORN_THREADS="4", LOG_LEVEL="WARNING")
            servers.append(
                Server(f"fleet{instances}-{n}", "wsgi:app", workdir, proxy.url_for(database_url))
            )
            servers[-1].start()
        drive(servers, 2)  # warm up: connections, the publisher, the watcher
        count, latencies, errors = drive(servers, SECONDS)
    finally:
        for server in servers:
            server.stop()
        for proxy in proxies:
            proxy.close()
    latencies.sort()
    return {
        "per_second": count / SECONDS,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else None,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else None,
        "errors": len(errors),
    }


def fresh_database(url):
    name = f"bench_fleet_{uuid.uuid4().hex[:8]}"
    admin = urlsplit(url)._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlsplit(url)._replace(path=f"/{name}").geturl(), admin, name


def main():
    url = os.environ.get("BENCH_DATABASE_URL")
    if not url:
        print("fleet: skipped (set BENCH_DATABASE_URL to a PostgreSQL server)")
        return
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for instances in (1, 2):
            database_url, admin, name = fresh_database(url)
            try:
                results[instances] = run(database_url, instances, Path(workdir))
            finally:
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    print(f"\nfleet: creates over a {DELAY * 1000:.0f} ms network, 16 connections per instance")
    for instances, figures in results.items():
        print(
            f"  {instances} instance(s): {figures['per_second']:7.1f} creates/s  "
            f"p50 {figures['p50_ms']:6.1f} ms  p99 {figures['p99_ms']:6.1f} ms  "
            f"errors {figures['errors']}"
        )
    ratio = results[2]["per_second"] / results[1]["per_second"]
    verdict = "ok" if ratio >= 1.6 else "MISSED"
    print(f"  two instances / one: x{ratio:.2f} (target >= 1.6: {verdict})")


if __name__ == "__main__":
    main()
