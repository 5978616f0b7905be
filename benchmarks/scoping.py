"""What a token's agent scope costs: scoped against unscoped requests, ``make bench-scoping``.

One service, its tokens file holding two tokens that differ only in their
scope: ``agents = ["agent-*"]`` (every seeded session is in it, so both
answer the same rows) and none.  wrk sends the same GETs of one session and
the same first pages of the list with either token, in turn, for several
rounds (alternating which goes first); each figure is the median of the
rounds' scoped/unscoped ratios.  The target: a scoped request costs less
than 5 % more (a ratio of at least 0.95).

Environment: BENCH_QUICK=1 (one round of 2 s), BENCH_ROUNDS, BENCH_WINDOW,
BENCH_DATABASE_URL (a PostgreSQL database of its own: its rows are DELETED).
"""

import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sessions_app import tokenfile

from .run import AGENTS, empty_postgresql, wrk
from .servers import Server

SCOPED, UNSCOPED = "bench-scoped-token", "bench-unscoped-token"
TOKENS = f"""
[[token]]
name = "scoped"
sha256 = "{tokenfile.digest(SCOPED)}"
access = "read-write"
agents = ["agent-*"]

[[token]]
name = "unscoped"
sha256 = "{tokenfile.digest(UNSCOPED)}"
access = "read-write"
"""
SESSIONS = 1_000
CONNECTIONS = 16


def seed(port, count):
    """Create ``count`` sessions over the bench's agents; return their ids."""
    local = threading.local()

    def create(n):
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        body = json.dumps({"agent_id": AGENTS[n % len(AGENTS)], "task_id": f"task-{n}"})
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {UNSCOPED}"}
        local.connection.request("POST", "/api/sessions", body=body, headers=headers)
        response = local.connection.getresponse()
        answer = json.loads(response.read())
        if response.status != 201:
            raise RuntimeError(f"seeding: {response.status} {answer}")
        return answer["id"]

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(create, range(count)))


def bench(label, database_url, rounds, window, workdir):
    """Return ``{scenario: {"scoped": rps, "unscoped": rps, "ratio": median ratio}}``."""
    service = Server("service", "wsgi:app", workdir, database_url).start()
    try:
        ids = seed(service.port, SESSIONS)
        plain = {"get": [f"GET /api/sessions/{sid}" for sid in ids], "list": ["GET /api/sessions"]}
        results = {}
        for name, lines in plain.items():
            runs = {"scoped": [], "unscoped": []}
            for r in range(rounds):
                order = ("scoped", "unscoped") if r % 2 == 0 else ("unscoped", "scoped")
                for who in order:
                    token = SCOPED if who == "scoped" else UNSCOPED
                    sent = [f"{line}\t\tAuthorization: Bearer {token}" for line in lines]
                    figures = wrk(service.url, sent, window, CONNECTIONS, workdir)
                    if figures["failed"]:
                        raise RuntimeError(f"{name} {who}: {figures['statuses']}")
                    runs[who].append(figures)
            print(f"[{label}] {name}: {rounds} rounds done", flush=True)
            results[name] = {
                who: statistics.median(f["rps"] for f in figures) for who, figures in runs.items()
            }
            results[name]["p50_ms"] = {
                who: statistics.median(f["p50_us"] for f in figures) / 1000
                for who, figures in runs.items()
            }
            results[name]["ratio"] = statistics.median(
                s["rps"] / u["rps"] for s, u in zip(runs["scoped"], runs["unscoped"], strict=True)
            )
        return results
    finally:
        service.stop()


def main():
    quick = os.environ.get("BENCH_QUICK") == "1"
    rounds = int(os.environ.get("BENCH_ROUNDS", 1 if quick else 5))
    window = int(os.environ.get("BENCH_WINDOW", 2 if quick else 3))
    with tempfile.TemporaryDirectory(prefix="sessions-bench-scoping-") as folder:
        workdir = Path(folder)
        tokens = workdir / "tokens.toml"
        tokens.write_text(TOKENS)
        os.environ["SESSIONS_API_TOKENS_FILE"] = str(tokens)
        databases = [("sqlite", f"sqlite:///{workdir}/bench.sqlite3")]
        if os.environ.get("BENCH_DATABASE_URL"):
            empty_postgresql(os.environ["BENCH_DATABASE_URL"])
            databases.append(("postgresql", os.environ["BENCH_DATABASE_URL"]))
        failed = False
        print(f"{'database':<11} {'scenario':<6} {'scoped':>9} {'unscoped':>9} {'ratio':>6}")
        for label, url in databases:
            for name, figures in bench(label, url, rounds, window, workdir).items():
                print(
                    f"{label:<11} {name:<6} {figures['scoped']:>7,.0f}/s "
                    f"{figures['unscoped']:>7,.0f}/s {figures['ratio']:>6.3f}"
                    f"  (p50 {figures['p50_ms']['scoped']:.2f} / "
                    f"{figures['p50_ms']['unscoped']:.2f} ms)"
                )
                failed |= figures["ratio"] < 0.95
        if failed:
            sys.exit("a scoped request cost 5 % more than an unscoped one or worse")


if __name__ == "__main__":
    main()
