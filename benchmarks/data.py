"""Bench of data filters and bulk changes (contract sections 10 and 11), part of ``make bench``.

On each database (SQLite, and PostgreSQL with ``BENCH_DATABASE_URL``),
against real Gunicorn servers under the project's gunicorn.conf.py:

1. Migration ``0006_data_filter`` on 100,000 sessions: the GIN index is
   dropped and the migration applied again, as an upgrade would (timed).
2. List and count with a data filter at 100,000 sessions (5 agents), one
   wrk connection: a filter matching one session, alone and with its agent,
   and one matching 2% of them (first page only).  Besides the latencies:
   the workers' CPU time per answer, which a loaded machine changes less.
3. A bulk change of 10,000 sessions while 16 connections create sessions
   and send messages: its time, and the writers' throughput meanwhile as a
   share of theirs just before.
4. SQLite only: what ``0008_agent_data_index`` (``data`` in the agent's
   index) costs writes.  Two servers, one on a database with the migration
   and one with it taken back, each with 20,000 sessions; 16 connections
   create sessions, then PATCH sessions' ``data`` (each PATCH changes it),
   in interleaved rounds; the ratio is the median of the rounds'
   after/before throughputs.

Environment: BENCH_QUICK=1 (one round of 2 s), BENCH_ROUNDS, BENCH_WINDOW,
BENCH_DATABASE_URL (databases named after it with _data and _bulk are made
and dropped), BENCH_ONLY (some of filters,bulk,writes).
"""

import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from urllib.parse import quote

from .finding import AGENTS, CONNECTIONS, STATUSES, before_and_after, connect, database, insert
from .run import RESULTS, machine, seed, wrk
from .servers import Client, Server

SESSIONS = 100_000
BULK = 10_000
DAY_US = 86_400 * 1_000_000


def settings():
    quick = os.environ.get("BENCH_QUICK") == "1"
    return {
        "rounds": int(os.environ.get("BENCH_ROUNDS", 1 if quick else 3)),
        "window": int(os.environ.get("BENCH_WINDOW", 2 if quick else 3)),
    }


def rows(count, now, agent=None, status=None):
    """Session rows (finding.insert's column order) with data like a tool's: a PR, a repo."""
    from sessions_app.ids import new_session_id

    made = []
    for n in range(count):
        created = now - random.randrange(30 * DAY_US)
        data = {"pr": n, "repo": f"repo-{n % 50}", "labels": ["ci", f"team-{n % 7}"],
                "workdir": f"/src/{n % 50}"}  # fmt: skip
        made.append(
            (new_session_id(created), agent or AGENTS[n % 5], f"task-{n}",
             status or random.choice(STATUSES), None, json.dumps(data), created, created,
             created, 0)
        )  # fmt: skip
    return made


def remigrate(url):
    """Drop the data index and apply 0006_data_filter again; return the seconds it took."""
    from sessions_app import create_app, db, migrations

    with connect(url) as conn:
        conn.execute("DROP INDEX IF EXISTS session_data_jsonb")
        conn.execute(f"DELETE FROM {migrations.HISTORY_TABLE} WHERE name = '0006_data_filter'")
    create_app({"DATABASE_URL": url})
    started = time.monotonic()
    applied = migrations.upgrade()
    seconds = time.monotonic() - started
    db.database.close_all()
    assert applied == ["0006_data_filter"], applied
    return seconds


def bench_filters(kind, config, workdir):
    with database(kind, workdir, "data") as url:
        print(f"[{kind}] data: storing {SESSIONS:,} sessions ...", flush=True)
        made = rows(SESSIONS, time.time_ns() // 1000)
        insert(url, made)
        migration = remigrate(url)
        one = json.loads(made[4242][5])["pr"]
        agent = made[4242][1]
        single, broad = quote(json.dumps({"pr": one})), quote(json.dumps({"repo": "repo-7"}))
        paths = {
            "list, data alone (1 match)": f"/api/sessions?data={single}",
            "list, data + agent (1 match)": f"/api/sessions?data={single}&agent_id={agent}",
            "list, data alone (2% match)": f"/api/sessions?data={broad}",
            "list, data + agent (2% match)": f"/api/sessions?data={broad}&agent_id={agent}",
            "count, data alone (1 match)": f"/api/sessions/count?data={single}",
            "count, data + agent (1 match)": f"/api/sessions/count?data={single}&agent_id={agent}",
            "count, data alone (2% match)": f"/api/sessions/count?data={broad}",
        }
        server = Server(f"{kind}-data", "wsgi:app", workdir, url).start()
        try:
            result = {}
            for name, path in paths.items():
                status, answer = Client(server.port).call("GET", path)
                assert status == 200, answer
                cpu = server.cpu_seconds()
                runs = [wrk(server.url, [f"GET {path}"], config["window"], 1, workdir)
                        for _ in range(config["rounds"])]  # fmt: skip
                cpu = server.cpu_seconds() - cpu
                found = answer.get("count", len(answer.get("sessions", ())))
                result[name] = {
                    "found": found,
                    "p50_ms": statistics.median(r["p50_us"] for r in runs) / 1000,
                    "p99_ms": statistics.median(r["p99_us"] for r in runs) / 1000,
                    # The workers' CPU per answer: what the query costs, which
                    # a loaded machine's latency shows only with its waits.
                    "cpu_ms": cpu * 1000 / max(1, sum(r["received"] for r in runs)),
                    "failed": sum(r["failed"] for r in runs),
                }
        finally:
            server.stop()
    return {"sessions": SESSIONS, "migration_seconds": migration, "queries": result}


def bench_bulk(kind, config, workdir):
    with database(kind, workdir, "bulk") as url:
        now = time.time_ns() // 1000
        insert(url, rows(BULK, now, agent="bulk", status="active") + rows(10_000, now))
        server = Server(f"{kind}-bulk", "wsgi:app", workdir, url).start()
        try:
            lines = [
                'POST /api/sessions\t{"agent_id": "writer", "task_id": "t", "data": {"pr": 1}}'
            ]
            client = Client(server.port)
            for _ in range(50):
                sid = client.call("POST", "/api/sessions", {"agent_id": "writer"})[1]["id"]
                lines.append(f'POST /api/sessions/{sid}/message\t{{"content": "Still here."}}')
            baseline = wrk(server.url, lines, config["window"], CONNECTIONS, workdir)
            answer, timing = {}, {}

            def change():
                bulk = Client(server.port)
                # Rests included, 10,000 sessions take longer than a plain request.
                bulk.connection.timeout = 300
                started = time.monotonic()
                answer.update(
                    bulk.call(
                        "POST",
                        "/api/sessions/bulk",
                        {"filter": {"agent_id": "bulk"}, "set": {"status": "failed"},
                         "limit": BULK},
                    )[1]
                )  # fmt: skip
                timing["seconds"] = time.monotonic() - started

            thread = threading.Thread(target=change)
            thread.start()
            during = []
            while thread.is_alive():
                during.append(wrk(server.url, lines, 1, CONNECTIONS, workdir))
            thread.join()
            after = wrk(server.url, lines, config["window"], CONNECTIONS, workdir)
        finally:
            server.stop()
    writes = statistics.median(f["rps"] for f in during)
    return {
        "sessions": BULK,
        "answer": answer,
        "seconds": timing["seconds"],
        "baseline_rps": baseline["rps"],
        "after_rps": after["rps"],
        "during_rps": writes,
        "kept": writes / statistics.mean([baseline["rps"], after["rps"]]),
        "during_p99_ms": statistics.median(f["p99_us"] for f in during) / 1000,
        "failed": baseline["failed"] + after["failed"] + sum(f["failed"] for f in during),
    }


def take_back_0008(url):
    """Give a migrated SQLite database the agent's index as it was before 0008."""
    with connect(url) as conn:
        conn.execute('DROP INDEX "session_agent_id_id_data"')
        conn.execute('CREATE INDEX "session_agent_id_id" ON "sessions" ("agent_id", "id")')


def bench_writes(kind, config, workdir):
    if kind != "sqlite":
        return None  # 0008 changes nothing on PostgreSQL
    with (
        database(kind, workdir, "after") as after_url,
        database(kind, workdir, "before") as before_url,
    ):
        take_back_0008(before_url)
        now = time.time_ns() // 1000
        servers = {}
        for name, url in (("after", after_url), ("before", before_url)):
            insert(url, rows(20_000, now))
            servers[name] = Server(f"{kind}-writes-{name}", "wsgi:app", workdir, url).start()
        try:
            lines = {}
            for name, server in servers.items():
                targets = seed(server.port, ["bench-patch"], 100)
                lines[name] = {
                    "create": [
                        'POST /api/sessions\t{"agent_id": "bench-create", "task_id": "t-1", '
                        '"data": {"pr": 7, "repo": "repo-7", "labels": ["ci", "team-1"], '
                        '"workdir": "/src/7"}}'
                    ],
                    # Each session's data alternates, so every PATCH writes.
                    "patch data": [
                        f'PATCH /api/sessions/{sid}\t{{"data": {{"pr": {n}}}}}'
                        for n in (1, 2)
                        for sid in targets
                    ],
                }
            return before_and_after(kind, servers, lines, config, workdir)
        finally:
            for server in servers.values():
                server.stop()


def report(kind, result):
    print(f"\n== {kind} ==")
    if "filters" in result:
        f = result["filters"]
        print(f"migration 0006_data_filter at {f['sessions']:,} sessions: "
              f"{f['migration_seconds']:.2f} s")  # fmt: skip
        for name, q in f["queries"].items():
            print(f"{name:<31} found {q['found']:>5,}: p50 {q['p50_ms']:6.2f} ms, "
                  f"p99 {q['p99_ms']:6.2f} ms, CPU {q['cpu_ms']:6.2f} ms, "
                  f"failed {q['failed']}")  # fmt: skip
    if "bulk" in result:
        b = result["bulk"]
        print(
            f"bulk change of {b['sessions']:,} sessions: {b['seconds']:.1f} s, "
            f"changed {b['answer'].get('changed')}; writers {b['baseline_rps']:.0f}/s before, "
            f"{b['during_rps']:.0f}/s during (p99 {b['during_p99_ms']:.1f} ms), "
            f"{b['after_rps']:.0f}/s after: kept {b['kept']:.2f}; failed {b['failed']}"
        )
    if result.get("writes"):
        for scenario, w in result["writes"].items():
            print(
                f"{scenario} with 0008 against without: {w['after_rps']:.0f}/s against "
                f"{w['before_rps']:.0f}/s, ratio {w['ratio']:.2f} (p99 {w['after_p99_ms']:.1f} "
                f"against {w['before_p99_ms']:.1f} ms); failed {w['failed']}"
            )


def main():
    config = settings()
    kinds = ["sqlite"] + (["postgresql"] if os.environ.get("BENCH_DATABASE_URL") else [])
    parts = {"filters": bench_filters, "bulk": bench_bulk, "writes": bench_writes}
    only = os.environ.get("BENCH_ONLY", ",".join(parts)).split(",")
    run = {"machine": machine(), "settings": config, "results": {}}
    with tempfile.TemporaryDirectory(prefix="sessions-bench-data-") as workdir:
        for kind in kinds:
            run["results"][kind] = {
                name: bench(kind, config, workdir) for name, bench in parts.items() if name in only
            }
    for kind, result in run["results"].items():
        report(kind, result)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"data-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(run, indent=2) + "\n")
    print(f"\nFigures written to {path}")
    queries = [
        q for r in run["results"].values() for q in r.get("filters", {}).get("queries", {}).values()
    ]
    failed = (
        any(q["failed"] for q in queries)
        or any(r["bulk"]["failed"] for r in run["results"].values() if "bulk" in r)
        or any(
            w["failed"] for r in run["results"].values() for w in (r.get("writes") or {}).values()
        )
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
