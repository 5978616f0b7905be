"""Bench of finding and retention (contract sections 8 and 9): ``make bench-finding``.

Three measurements on each database (SQLite, and PostgreSQL with
``BENCH_DATABASE_URL``), each against real Gunicorn servers under the
project's gunicorn.conf.py, driven by wrk:

1. Writes before and after the indexes of ``0005_finding``: two servers, one
   on a database with the migration's indexes and one with them taken back
   (the four ``…last_active, id`` indexes dropped, messages' ``session_id``
   index restored), create and message in interleaved rounds; the ratio is
   the median of the rounds' after/before throughputs.
2. ``GET /api/sessions/count`` at 100,000 sessions, one connection, for a
   count of everything, of one agent, "active and quiet for an hour", and
   "failed today for one agent".
3. Prune of many expired sessions (10 messages each) while 16 connections
   create sessions and send messages: the writers' latency before and
   during the prune, and that no writer failed and every unexpired session
   stayed.
4. Prune of a backlog of old changes (``BENCH_PRUNE_CHANGES``, a million by
   default) while 8 writer threads create sessions: their p99 before, and
   p99 and worst latency during the prune, and that none failed.

Environment:
  BENCH_QUICK=1          one round of 2 s, 10,000 sessions to prune
  BENCH_ROUNDS, BENCH_WINDOW, BENCH_PRUNE   rounds, seconds per round, sessions to prune
  BENCH_ONLY             some of writes,count,prune,prune_changes (all by default)
  BENCH_DATABASE_URL     also bench on PostgreSQL: databases named after this
                         one with _before, _count and _prune are made and dropped
"""

import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from .run import RESULTS, machine, seed, wrk
from .servers import ROOT, Client, Server

FLASK = Path(sys.executable).with_name("flask")
CONNECTIONS = 16
DAY_US = 86_400 * 1_000_000
AGENTS = [f"agent-{n}" for n in range(5)]
STATUSES = ("created", "active", "paused", "completed", "failed")
INDEXES_0005 = ("last_active", "agent_id_last_active", "task_id_last_active", "status_last_active")


def settings():
    quick = os.environ.get("BENCH_QUICK") == "1"
    return {
        "rounds": int(os.environ.get("BENCH_ROUNDS", 1 if quick else 5)),
        "window": int(os.environ.get("BENCH_WINDOW", 2 if quick else 3)),
        "count_sessions": 100_000,
        "prune_sessions": int(os.environ.get("BENCH_PRUNE", 10_000 if quick else 50_000)),
        "prune_changes": int(
            os.environ.get("BENCH_PRUNE_CHANGES", 100_000 if quick else 1_000_000)
        ),
        "messages_each": 10,
    }


# -- databases ------------------------------------------------------------------


@contextmanager
def database(kind, workdir, name):
    """Yield the URL of a new, migrated database of ``kind``; drop it after (PostgreSQL)."""
    from sessions_app import create_app, db, migrations

    if kind == "sqlite":
        url = f"sqlite:///{workdir}/{name}.sqlite3"
    else:
        base = urlsplit(os.environ["BENCH_DATABASE_URL"])
        dbname = f"{base.path.lstrip('/')}_{name}"
        admin = base._replace(path="/postgres").geturl()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{dbname}"')
        url = base._replace(path=f"/{dbname}").geturl()
    create_app({"DATABASE_URL": url})
    migrations.upgrade()
    db.database.close_all()
    try:
        yield url
    finally:
        if kind != "sqlite":
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


@contextmanager
def connect(url):
    """A plain DB-API connection, committing at the end."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30)
    else:
        conn = psycopg.connect(url)
    try:
        yield conn
        conn.commit()
    finally:
        conn.close()


def take_back_the_indexes(url):
    """Give the database the indexes it had before 0005_finding."""
    with connect(url) as conn:
        for name in INDEXES_0005:
            conn.execute(f'DROP INDEX "session_{name}_id"')
        conn.execute('CREATE INDEX "message_session_id" ON "messages" ("session_id")')


SESSION_COLUMNS = (
    "id, agent_id, task_id, status, prompt, data, created_at, last_active, "
    "status_changed_at, message_count"
)
MESSAGE_COLUMNS = "session_id, seq, message_id, role, content, timestamp"


def insert(url, sessions, messages=()):
    """Store rows (tuples in the column orders above) directly: COPY on PostgreSQL."""
    with connect(url) as conn:
        if url.startswith("sqlite"):
            conn.executemany(
                f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ({','.join('?' * 10)})", sessions
            )
            conn.executemany(
                f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES ({','.join('?' * 6)})", messages
            )
            return
        with conn.cursor() as cursor:
            with cursor.copy(f"COPY sessions ({SESSION_COLUMNS}) FROM STDIN") as copy:
                for row in sessions:
                    copy.write_row(row)
            with cursor.copy(f"COPY messages ({MESSAGE_COLUMNS}) FROM STDIN") as copy:
                for row in messages:
                    copy.write_row(row)
    if not url.startswith("sqlite"):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE sessions")
            conn.execute("VACUUM ANALYZE messages")


def made_sessions(count, now, status=None, idle_us=None, messages_each=0):
    """Rows of ``count`` sessions of 30 days (or idle ``idle_us``), and their messages."""
    from sessions_app.ids import new_message_id, new_session_id

    sessions, messages = [], []
    for n in range(count):
        if idle_us is None:
            created = now - random.randrange(30 * DAY_US)
            last = min(now, created + random.randrange(DAY_US))
        else:
            last = now - idle_us - random.randrange(DAY_US)
            created = last - random.randrange(DAY_US)
        session_id = new_session_id(created)
        state = status or random.choice(STATUSES)
        sessions.append(
            (session_id, AGENTS[n % 5], f"task-{n}", state, None, "{}", created, last, last,
             messages_each)
        )  # fmt: skip
        messages += [
            (
                session_id,
                seq,
                new_message_id(created + seq),
                "user",
                "Run the tests.",
                created + seq,
            )
            for seq in range(1, messages_each + 1)
        ]
    return sessions, messages


# -- 1. writes before and after the indexes -------------------------------------


def bench_writes(kind, config, workdir):
    with (
        database(kind, workdir, "after") as after_url,
        database(kind, workdir, "before") as before_url,
    ):
        take_back_the_indexes(before_url)
        servers = {
            "after": Server(f"{kind}-after", "wsgi:app", workdir, after_url).start(),
            "before": Server(f"{kind}-before", "wsgi:app", workdir, before_url).start(),
        }
        try:
            lines = {}
            for name, server in servers.items():
                targets = seed(server.port, ["bench-message"], 100)
                seed(server.port, AGENTS, 900)
                body = '{"content": "Run the tests and report.", "role": "user"}'
                lines[name] = {
                    "create": [
                        'POST /api/sessions\t{"agent_id": "bench-create", "task_id": "t-1", '
                        '"prompt": "Write the release notes.", "data": {"workdir": "/src"}}'
                    ],
                    "message": [f"POST /api/sessions/{sid}/message\t{body}" for sid in targets],
                }
            return before_and_after(kind, servers, lines, config, workdir)
        finally:
            for server in servers.values():
                server.stop()


def before_and_after(kind, servers, lines, config, workdir):
    """Run each scenario of ``lines`` on the "before" and "after" servers in interleaved rounds.

    Return per scenario the medians of both and the median of the rounds'
    after/before ratios, so that a machine's drift weighs on both sides.
    """
    scenarios = tuple(lines["after"])
    runs = {(s, name): [] for s in scenarios for name in servers}
    for r in range(config["rounds"]):
        for scenario in scenarios:
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for name in order:
                figures = wrk(
                    servers[name].url, lines[name][scenario], config["window"],
                    CONNECTIONS, workdir,
                )  # fmt: skip
                runs[scenario, name].append(figures)
        print(f"[{kind}] writes: round {r + 1}/{config['rounds']} done", flush=True)
    result = {}
    for scenario in scenarios:
        before, after = runs[scenario, "before"], runs[scenario, "after"]
        result[scenario] = {
            "before_rps": statistics.median(f["rps"] for f in before),
            "after_rps": statistics.median(f["rps"] for f in after),
            "ratio": statistics.median(
                a["rps"] / b["rps"] for a, b in zip(after, before, strict=True)
            ),
            "before_p99_ms": statistics.median(f["p99_us"] for f in before) / 1000,
            "after_p99_ms": statistics.median(f["p99_us"] for f in after) / 1000,
            "failed": sum(f["failed"] for f in before + after),
        }
    return result


# -- 2. counts at 100,000 sessions -----------------------------------------------


def bench_count(kind, config, workdir):
    from sessions_app.timefmt import format_us, now_us

    with database(kind, workdir, "count") as url:
        now = now_us()
        print(f"[{kind}] count: storing {config['count_sessions']:,} sessions ...", flush=True)
        insert(url, made_sessions(config["count_sessions"], now)[0])
        hour_ago, today = format_us(now - 3_600_000_000), format_us(now - now % DAY_US)
        paths = {
            "everything": "/api/sessions/count",
            "one agent": "/api/sessions/count?agent_id=agent-1",
            "active, quiet for an hour": (
                f"/api/sessions/count?status=active&active_before={hour_ago}"
            ),
            "failed today, one agent": (
                f"/api/sessions/count?agent_id=agent-2&status=failed&created_after={today}"
            ),
        }
        server = Server(f"{kind}-count", "wsgi:app", workdir, url).start()
        try:
            result = {}
            for name, path in paths.items():
                status, answer = Client(server.port).call("GET", path)
                assert status == 200, answer
                runs = [wrk(server.url, [f"GET {path}"], config["window"], 1, workdir)
                        for _ in range(config["rounds"])]  # fmt: skip
                result[name] = {
                    "count": answer["count"],
                    "p50_ms": statistics.median(r["p50_us"] for r in runs) / 1000,
                    "p99_ms": statistics.median(r["p99_us"] for r in runs) / 1000,
                    "failed": sum(r["failed"] for r in runs),
                }
        finally:
            server.stop()
    return {"sessions": config["count_sessions"], "queries": result}


# -- 3. prune under writers --------------------------------------------------------


def bench_prune(kind, config, workdir):
    from sessions_app.timefmt import now_us

    expired_n, each = config["prune_sessions"], config["messages_each"]
    with database(kind, workdir, "prune") as url:
        now = now_us()
        print(
            f"[{kind}] prune: storing {expired_n:,} expired sessions x {each} messages ...",
            flush=True,
        )
        expired, messages = made_sessions(
            expired_n, now, status="completed", idle_us=2 * DAY_US, messages_each=each
        )
        quiet, _ = made_sessions(1_000, now, status="active", idle_us=2 * DAY_US)
        insert(url, expired + quiet, messages)
        env = {"SESSION_RETENTION_SECONDS": "86400"}
        os.environ.update(env)
        server = Server(f"{kind}-prune", "wsgi:app", workdir, url).start()
        try:
            body = '{"content": "Still here.", "role": "user"}'
            lines = [f"POST /api/sessions/{row[0]}/message\t{body}" for row in quiet[:200]]
            lines.append('POST /api/sessions\t{"agent_id": "writer", "task_id": "t"}')
            baseline = wrk(server.url, lines, config["window"], CONNECTIONS, workdir)
            log = open(Path(workdir) / f"{kind}-prune.log", "w")  # noqa: SIM115
            started = time.monotonic()
            prune = subprocess.Popen(
                [str(FLASK), "--app", "sessions_app", "prune"],
                cwd=ROOT,
                env={**os.environ, "DATABASE_URL": url, "LOG_FORMAT": "json",
                     "PROMETHEUS_MULTIPROC_DIR": str(Path(workdir) / f"{kind}-prune-metrics")},
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            during = []
            while prune.poll() is None:
                during.append(wrk(server.url, lines, 2, CONNECTIONS, workdir))
            seconds = time.monotonic() - started
            log.close()
            assert prune.returncode == 0, (Path(workdir) / f"{kind}-prune.log").read_text()
            client = Client(server.port)
            left = client.call("GET", "/api/sessions/count?status=completed")[1]["count"]
            quiet_left = client.call("GET", "/api/sessions/count?status=active")[1]["count"]
        finally:
            server.stop()
            for name in env:
                os.environ.pop(name, None)
    return {
        "expired": expired_n,
        "messages": expired_n * each,
        "prune_seconds": seconds,
        "left_expired": left,
        "quiet_active_kept": quiet_left,
        "baseline": {k: baseline[k] for k in ("rps", "p50_us", "p99_us", "failed")},
        "during": [{k: f[k] for k in ("rps", "p50_us", "p99_us", "failed")} for f in during],
    }


# -- 4. prune of a change backlog under writers ----------------------------------------


def bench_prune_changes(kind, config, workdir):
    """Prune ``prune_changes`` old changes while writer threads create sessions; their latency."""
    import threading

    from sessions_app.timefmt import now_us

    backlog = config["prune_changes"]
    with database(kind, workdir, "prune_changes") as url:
        print(f"[{kind}] prune changes: storing {backlog:,} changes 8 days old ...", flush=True)
        at = now_us() - 8 * DAY_US
        row = ("session.created", "session-old", "old", None, "created", 1, at)
        with connect(url) as conn:
            slots = ",".join(["?" if url.startswith("sqlite") else "%s"] * len(row))
            cursor = conn.cursor()
            cursor.executemany(
                "INSERT INTO changes (type, session_id, agent_id, task_id, status, version, at)"
                f" VALUES ({slots})",
                [row] * backlog,
            )
        server = Server(f"{kind}-prune-changes", "wsgi:app", workdir, url).start()
        stop, lock, latencies = threading.Event(), threading.Lock(), []

        def write():
            client = Client(server.port)
            while not stop.is_set():
                started = time.monotonic()
                status, _ = client.call("POST", "/api/sessions", {"agent_id": "writer"})
                with lock:
                    latencies.append((started, time.monotonic() - started, status))

        writers = [threading.Thread(target=write) for _ in range(8)]
        try:
            for thread in writers:
                thread.start()
            time.sleep(config["window"])
            began = time.monotonic()
            pruned = subprocess.run(
                [str(FLASK), "--app", "sessions_app", "prune"],
                cwd=ROOT,
                env={**os.environ, "DATABASE_URL": url, "LOG_FORMAT": "json",
                     "PROMETHEUS_MULTIPROC_DIR": str(Path(workdir) / f"{kind}-pc-metrics")},
                capture_output=True,
                text=True,
            )  # fmt: skip
            ended = time.monotonic()
            time.sleep(1)
        finally:
            stop.set()
            for thread in writers:
                thread.join()
            server.stop()
        assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    before = sorted(took for at, took, _ in latencies if at < began)
    during = sorted(took for at, took, _ in latencies if began <= at < ended)
    return {
        "changes": backlog,
        "prune_seconds": ended - began,
        "summary": pruned.stdout.splitlines()[-1],
        "before_p99_ms": before[int(len(before) * 0.99)] * 1000,
        "during_p99_ms": during[int(len(during) * 0.99)] * 1000 if during else None,
        "during_worst_ms": during[-1] * 1000 if during else None,
        "during_writes": len(during),
        "failed": sum(1 for _, _, status in latencies if status != 201),
    }


# -- the run -------------------------------------------------------------------------


def report(kind, result):
    print(f"\n== {kind} ==")
    for scenario, w in result.get("writes", {}).items():
        print(
            f"{scenario:<8} before {w['before_rps']:>6.0f}/s (p99 {w['before_p99_ms']:.1f} ms)  "
            f"after {w['after_rps']:>6.0f}/s (p99 {w['after_p99_ms']:.1f} ms)  "
            f"after/before {w['ratio']:.2f}  failed {w['failed']}"
        )
    count = result.get("count", {"queries": {}})
    for name, q in count["queries"].items():
        print(
            f"count at {count['sessions']:,}, {name:<27} = {q['count']:>6,}: "
            f"p50 {q['p50_ms']:.2f} ms, p99 {q['p99_ms']:.2f} ms"
        )
    if "prune_changes" in result:
        c = result["prune_changes"]
        print(
            f"prune {c['changes']:,} changes in {c['prune_seconds']:.1f} s under 8 writer threads: "
            f"writers' p99 before {c['before_p99_ms']:.1f} ms, during {c['during_p99_ms']:.1f} ms, "
            f"worst {c['during_worst_ms']:.1f} ms ({c['during_writes']} writes); "
            f"failed {c['failed']}"
        )
    if "prune" not in result:
        return
    p = result["prune"]
    during = p["during"]
    base, worst = p["baseline"], max(f["p99_us"] for f in during) / 1000
    print(
        f"prune {p['expired']:,} sessions + {p['messages']:,} messages "
        f"in {p['prune_seconds']:.1f} s under {CONNECTIONS} writer connections; "
        f"left expired {p['left_expired']}, quiet active kept {p['quiet_active_kept']:,}"
    )
    print(
        f"  writers before: {base['rps']:.0f}/s p99 {base['p99_us'] / 1000:.1f} ms; "
        f"during ({len(during)} windows of 2 s): "
        f"{statistics.median(f['rps'] for f in during):.0f}/s, "
        f"p99 median {statistics.median(f['p99_us'] for f in during) / 1000:.1f} ms, "
        f"worst {worst:.1f} ms; "
        f"failed {base['failed'] + sum(f['failed'] for f in during)}"
    )


def main():
    config = settings()
    kinds = ["sqlite"] + (["postgresql"] if os.environ.get("BENCH_DATABASE_URL") else [])
    run = {"machine": machine(), "settings": config, "results": {}}
    parts = {
        "writes": bench_writes,
        "count": bench_count,
        "prune": bench_prune,
        "prune_changes": bench_prune_changes,
    }
    only = os.environ.get("BENCH_ONLY", ",".join(parts)).split(",")
    with tempfile.TemporaryDirectory(prefix="sessions-bench-finding-") as workdir:
        for kind in kinds:
            run["results"][kind] = {
                name: bench(kind, config, workdir) for name, bench in parts.items() if name in only
            }
    run["machine"]["load_average_after"] = os.getloadavg()
    for kind, result in run["results"].items():
        report(kind, result)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"finding-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(run, indent=2) + "\n")
    print(f"\nFigures written to {path}")
    failed = any(
        w["failed"] for r in run["results"].values() for w in r.get("writes", {}).values()
    ) or any(
        r["prune"]["left_expired"] or r["prune"]["baseline"]["failed"]
        or any(f["failed"] for f in r["prune"]["during"])
        for r in run["results"].values() if "prune" in r
    ) or any(
        r["prune_changes"]["failed"] for r in run["results"].values() if "prune_changes" in r
    )  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
