"""Writes across a fleet: one and two instances on one PostgreSQL, each over a slow network.

Each instance (4 workers x 4 threads: 16 connections) reaches PostgreSQL
through its own proxy adding ``BENCH_NET_DELAY_MS`` (2) each way, as hosts
on a network would; wrk keeps 16 connections per instance creating sessions
for ``BENCH_SECONDS`` (10).  With a lock every write of every host takes from
its change's insert to COMMIT, a second instance buys almost nothing: the
lock is held across network round trips.  The figure to read is the ratio
of two instances to one.

All of it shares one machine, so the bench also says what each part used
of its cores while the load ran (the instances' workers, PostgreSQL, the
proxies, wrk): a second instance can add only what the first left idle.
Each proxy runs in a process of its own, one event loop for its
connections, so it costs the instances little.

    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python -m benchmarks.fleet
"""

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from .run import wrk
from .servers import ROOT, Server, cpu_seconds

# The tests' delaying proxy: one implementation for both.
sys.path.insert(0, str(ROOT / "tests"))
import netdelay  # noqa: E402

CLIENTS_PER_INSTANCE = 16
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "1" if os.environ.get("BENCH_QUICK") == "1" else "3"))
DELAY_MS = float(os.environ.get("BENCH_NET_DELAY_MS", "2"))
#: wrk's requests: every create its own session (requests.lua cycles through them).
CREATE = 'POST /api/sessions\t{"agent_id": "bench", "task_id": "fleet", "data": {}}'


class ProxyProcess:
    """tests/netdelay.py's proxy to ``upstream`` in a process of its own, stopped by its PID."""

    def __init__(self, upstream, delay_ms):
        self.upstream = upstream
        self.process = subprocess.Popen(
            [
                sys.executable,
                netdelay.__file__,
                *map(str, upstream),
                str(delay_ms),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.port = int(self.process.stdout.readline())

    def url_for(self, database_url):
        return netdelay.through(database_url, self.upstream, self.port)

    def close(self):
        self.process.terminate()
        self.process.wait(10)


def postgres_pids():
    """Return the PIDs of the PostgreSQL server's processes (the backends among them)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().startswith("postgres"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def drive(servers, seconds, workdir):
    """Create sessions through each server at once (wrk, 16 connections each) for ``seconds``.

    Return wrk's figures for each server.
    """
    results = [None] * len(servers)

    def load(n, server):
        folder = Path(workdir) / f"wrk-{n}"
        folder.mkdir(exist_ok=True)
        results[n] = wrk(server.url, [CREATE], seconds, CLIENTS_PER_INSTANCE, folder)

    threads = [threading.Thread(target=load, args=item) for item in enumerate(servers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def run(database_url, instances, workdir):
    """Serve ``instances`` instances, each through its own proxy; drive them; return the figures."""
    upstream = urlsplit(database_url)
    proxies = [ProxyProcess((upstream.hostname, upstream.port), DELAY_MS) for _ in range(instances)]
    servers = []
    try:
        for n, proxy in enumerate(proxies):
            os.environ.update(WEB_CONCURRENCY="4", GUNICORN_THREADS="4", LOG_LEVEL="WARNING")
            servers.append(
                Server(f"fleet{instances}-{n}", "wsgi:app", workdir, proxy.url_for(database_url))
            )
            servers[-1].start()
        warm_up = drive(servers, 2, workdir)  # connections, the publisher, the watcher
        parts = {
            "instances": lambda: sum(server.cpu_seconds() for server in servers),
            "postgresql": lambda: cpu_seconds(postgres_pids()),
            "proxies": lambda: cpu_seconds(proxy.process.pid for proxy in proxies),
            "wrk": lambda: sum(
                getattr(resource.getrusage(resource.RUSAGE_CHILDREN), f)
                for f in ("ru_utime", "ru_stime")
            ),
        }
        before = {name: used() for name, used in parts.items()}
        figures = drive(servers, SECONDS, workdir)
        created = sum(f["statuses"].get("201", 0) for f in warm_up + figures)
        # wrk runs its send window, then lets every answer arrive.
        elapsed = max(f["elapsed"] for f in figures)
        cores = {name: (used() - before[name]) / elapsed for name, used in parts.items()}
    finally:
        for server in servers:
            server.stop()
        for proxy in proxies:
            proxy.close()
    with psycopg.connect(database_url) as conn:
        stored, published, queued = conn.execute(
            "SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM changes), "
            "(SELECT count(*) FROM change_queue)"
        ).fetchone()
    return {
        "per_second": sum(f["rps"] for f in figures),
        # Every 201 of the warm-up and the run is a session and a change in the feed.
        "created": created,
        "stored": stored,
        "published": published,
        "queued": queued,
        "p50_ms": max(f["p50_us"] for f in figures) / 1000,
        "p99_ms": max(f["p99_us"] for f in figures) / 1000,
        "errors": sum(f["failed"] for f in figures),
        "cores": cores,
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
    results = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as workdir:
        # One and two instances in turn, round after round: what the machine
        # does meanwhile falls on both.
        for _ in range(ROUNDS):
            for instances in results:
                database_url, admin, name = fresh_database(url)
                try:
                    results[instances].append(run(database_url, instances, Path(workdir)))
                finally:
                    with psycopg.connect(admin, autocommit=True) as conn:
                        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    print(
        f"\nfleet: creates over a {DELAY_MS:g} ms network, 16 connections per instance, "
        f"median of {ROUNDS} round(s)"
    )
    medians = {}
    for instances, rounds in results.items():
        medians[instances] = median = statistics.median(r["per_second"] for r in rounds)
        each = ", ".join(f"{r['per_second']:.0f}" for r in rounds)
        print(
            f"  {instances} instance(s): {median:7.1f} creates/s "
            f"(rounds: {each})  "
            f"p50 {statistics.median(r['p50_ms'] for r in rounds):6.1f} ms  "
            f"p99 {statistics.median(r['p99_ms'] for r in rounds):6.1f} ms  "
            f"errors {sum(r['errors'] for r in rounds)}"
        )
        print(
            f"      201s {sum(r['created'] for r in rounds)}, sessions stored "
            f"{sum(r['stored'] for r in rounds)}, changes in the feed "
            f"{sum(r['published'] for r in rounds)} (left queued: "
            f"{sum(r['queued'] for r in rounds)})"
        )
        used = {
            name: statistics.median(r["cores"][name] for r in rounds) for name in rounds[0]["cores"]
        }
        print(
            f"      cores used of {os.cpu_count()}: {sum(used.values()):.2f} = "
            + ", ".join(f"{name} {value:.2f}" for name, value in used.items())
        )
    ratio = medians[2] / medians[1]
    verdict = "ok" if ratio >= 1.6 else "MISSED"
    print(f"  two instances / one: x{ratio:.2f} (target >= 1.6: {verdict})")


if __name__ == "__main__":
    main()
