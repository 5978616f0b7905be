"""Benchmark the service against its ceiling, a bare Flask app: ``make bench``.

Both run under the project's gunicorn.conf.py, side by side, and wrk drives
them in turn, scenario by scenario, for several rounds (alternating which goes
first); the table gives medians and each scenario's ratio to the ceiling: the
median of the rounds' ratios, each taken from two runs made one after the
other, so that load from elsewhere on the machine weighs on both alike.

Environment:
  BENCH_QUICK=1        a short run (one round of 2 s, 20,000 sessions at the end)
  BENCH_ROUNDS, BENCH_WINDOW, BENCH_LARGE   rounds, seconds per round, sessions at the end
  BENCH_DATABASE_URL   also bench on this PostgreSQL database; its sessions and
                       messages are DELETED first, so give it a database of its own
"""

import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .servers import ROOT, Client, Server

HERE = Path(__file__).resolve().parent
LUA = HERE / "requests.lua"
RESULTS = HERE / "results"
DRAIN = 3  # seconds wrk runs after the send window, so every answer arrives
AGENTS = [f"agent-{n}" for n in range(5)]
MESSAGE_AGENT = "bench-message"
CREATE_AGENT = "bench-create"
CREATE_KEY_AGENT = "bench-create-key"
CONNECTIONS = 16
#: Lines of a keyed scenario, each with a key of its own: more than one run sends.
KEYED_LINES = 30_000
#: Scenario -> the scenario it is compared with, in the same round, on the service.
PAIRS = {"create_key": "create", "message_key": "message", "get_304": "get"}
#: Writes also run on the raw-SQL ceiling (benchmarks/raw.py), which does the same work.
RAW = ("create", "message")
#: Writes against the raw ceiling: throughput at least, CPU per write at most.
RAW_TARGETS = {"rps": 0.8, "cpu": 1.4}


def settings():
    """Return the run's settings from the environment."""
    quick = os.environ.get("BENCH_QUICK") == "1"
    return {
        "rounds": int(os.environ.get("BENCH_ROUNDS", 1 if quick else 5)),
        "window": int(os.environ.get("BENCH_WINDOW", 2 if quick else 3)),
        "small": 1_000,
        "large": int(os.environ.get("BENCH_LARGE", 20_000 if quick else 100_000)),
        "message_sessions": 100,
        "connections": CONNECTIONS,
    }


# -- load ---------------------------------------------------------------------


def wrk(url, lines, window, connections, workdir):
    """Send ``lines`` (see requests.lua) for ``window`` seconds; return the figures."""
    requests = Path(workdir) / "requests.txt"
    requests.write_text("\n".join(lines) + "\n")
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{window + DRAIN}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
        "--",
        str(requests),
        str(window),
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("BENCH "))
    figures = json.loads(line.removeprefix("BENCH "))
    figures["rps"] = figures["received"] / figures["elapsed"] if figures["elapsed"] else 0.0
    figures["failed"] = (
        sum(
            n
            for status, n in figures["statuses"].items()
            if not (status.startswith("2") or status == "304")
        )
        + sum(figures["socket_errors"].values())
        + figures["sent"]
        - figures["received"]
    )
    return figures


def summarize(runs):
    """Return the medians of several rounds and the sums that must be exact."""
    return {
        "rps": statistics.median(r["rps"] for r in runs),
        "p50_ms": statistics.median(r["p50_us"] for r in runs) / 1000,
        "p99_ms": statistics.median(r["p99_us"] for r in runs) / 1000,
        # CPU per request, where the run measured it (not for the latency runs).
        "cpu_ms": statistics.median(r["cpu_ms"] for r in runs)
        if all("cpu_ms" in r for r in runs)
        else None,
        "failed": sum(r["failed"] for r in runs),
        "created": sum(r["statuses"].get("201", 0) for r in runs),
        "not_modified": sum(r["statuses"].get("304", 0) for r in runs),
        "rounds": [
            {k: r[k] for k in ("rps", "p50_us", "p99_us", "statuses", "failed")} for r in runs
        ],
    }


# -- seeding and checking through the API --------------------------------------


def seed(port, agents, count):
    """Create ``count`` sessions over ``agents`` through the API; return their ids."""
    clients = {}

    def create(n):
        client = clients.setdefault(threading.get_ident(), Client(port))
        body = {
            "agent_id": agents[n % len(agents)],
            "task_id": f"task-{n}",
            "prompt": "Refactor the parser module.",
            "data": {"workdir": "/src", "n": n},
        }
        status, session = client.call("POST", "/api/sessions", body)
        if status != 201:
            raise RuntimeError(f"seeding: POST /api/sessions answered {status}: {session}")
        return session["id"]

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(create, range(count)))


def first_pages(port):
    """Return the first and second filtered-page paths of every agent."""
    firsts = [f"/api/sessions?agent_id={agent}&limit=50" for agent in AGENTS]
    client, seconds = Client(port), []
    for path in firsts:
        status, page = client.call("GET", path)
        if status != 200 or len(page["sessions"]) != 50 or not page["next_cursor"]:
            raise RuntimeError(f"GET {path} answered {status} without a full page")
        seconds.append(f"{path}&cursor={page['next_cursor']}")
    return firsts, seconds


def count_sessions(port, agent_id):
    """Count an agent's sessions by following the list's cursors."""
    client, total, cursor = Client(port), 0, None
    while True:
        path = f"/api/sessions?agent_id={agent_id}&limit=1000"
        status, page = client.call("GET", path + (f"&cursor={cursor}" if cursor else ""))
        total += len(page["sessions"])
        cursor = page["next_cursor"]
        if not cursor:
            return total


def count_messages(port, session_ids):
    """Sum ``message_count`` over the sessions."""
    client = Client(port)
    return sum(
        client.call("GET", f"/api/sessions/{sid}")[1]["message_count"] for sid in session_ids
    )


def grow(server, target, have, workdir):
    """Create sessions with wrk until there are about ``target``; return how many there are."""
    lines = [
        f'POST /api/sessions\t{{"agent_id": "{agent}", "task_id": "bulk", "data": {{}}}}'
        for agent in AGENTS
    ]
    rate = 500.0
    while have < target:
        chunk = max(1, min(30, round((target - have) / rate)))
        figures = wrk(server.url, lines, chunk, CONNECTIONS, workdir)
        created = figures["statuses"].get("201", 0)
        if created != sum(figures["statuses"].values()) or not created:
            raise RuntimeError(f"seeding with wrk failed: {figures}")
        have += created
        rate = max(created / chunk, 50.0)
    return have


# -- the run ------------------------------------------------------------------


def bench(label, database_url, config, workdir):
    """Run every scenario on one database; return the results."""
    service = Server("service", "wsgi:app", workdir, database_url).start()
    ceiling = Server("ceiling", "benchmarks.ceiling:app", workdir, database_url).start()
    raw = Server("raw", "benchmarks.raw:app", workdir, database_url).start()
    try:
        return _scenarios(label, service, ceiling, raw, config, workdir)
    finally:
        raw.stop()
        ceiling.stop()
        service.stop()


def _scenarios(label, service, ceiling, raw, config, workdir):
    rounds, window, c = config["rounds"], config["window"], config["connections"]
    print(f"[{label}] seeding {config['small']:,} sessions through the API ...", flush=True)
    message_ids = seed(service.port, [MESSAGE_AGENT], config["message_sessions"])
    ids = seed(service.port, AGENTS, config["small"] - len(message_ids))
    firsts, seconds = first_pages(service.port)

    body = '{"content": "Run the tests and report.", "role": "user"}'
    sends = [f"POST /api/sessions/{sid}/message\t{body}" for sid in message_ids]
    gets = [f"GET /api/sessions/{sid}" for sid in ids]
    create_key = (
        f'POST /api/sessions\t{{"agent_id": "{CREATE_KEY_AGENT}", "task_id": "t-1", '
        '"prompt": "Write the release notes.", "data": {"workdir": "/src"}}'
    )
    runs = iter(range(1_000_000))

    def keyed(lines):
        """Return a maker of ``lines`` (cycled), each with a key no request had before."""

        def make():
            run = next(runs)
            return [
                f"{lines[n % len(lines)]}\tIdempotency-Key: bench-{run}-{n}"
                for n in range(KEYED_LINES)
            ]

        return make

    scenarios = {
        "get": gets,
        # The seeded sessions never change: each is at version 1.
        "get_304": [f'{line}\t\tIf-None-Match: "1"' for line in gets],
        "list": [f"GET {path}" for path in firsts],
        "list_next": [f"GET {path}" for path in seconds],
        "create": [
            f'POST /api/sessions\t{{"agent_id": "{CREATE_AGENT}", "task_id": "t-1", '
            '"prompt": "Write the release notes.", "data": {"workdir": "/src"}}'
        ],
        "create_key": keyed([create_key]),
        "message": sends,
        "message_key": keyed(sends),
        # 80 % reads (gets and filtered pages), 20 % messages, interleaved.
        "mixed": [
            line
            for n in range(len(sends))
            for line in (
                gets[n * 3 % len(gets)],
                gets[(n * 3 + 1) % len(gets)],
                f"GET {firsts[n % len(firsts)]}",
                gets[(n * 3 + 2) % len(gets)],
                sends[n],
            )
        ],
    }
    results = {name: {"service": [], "ceiling": []} for name in scenarios}
    for name in RAW:
        results[name]["raw"] = []
    latency = {"small": [], "large": []}

    def measure(names):
        for r in range(rounds):
            for name in names:
                servers = [ceiling, service] + ([raw] if name in RAW else [])
                for server in servers if r % 2 == 0 else servers[::-1]:
                    lines = scenarios[name]
                    lines = lines() if callable(lines) else lines
                    cpu = server.cpu_seconds()
                    figures = wrk(server.url, lines, window, c, workdir)
                    used = server.cpu_seconds() - cpu
                    figures["cpu_ms"] = (
                        used * 1000 / figures["received"] if figures["received"] else 0
                    )
                    results[name][server.name].append(figures)
            print(f"[{label}] {', '.join(names)}: round {r + 1}/{rounds} done", flush=True)

    def measure_latency(size):
        for _ in range(rounds):
            latency[size].append(wrk(service.url, scenarios["list"], window, 1, workdir))

    measure(["get", "get_304", "list", "list_next"])
    measure_latency("small")
    measure(["create", "create_key", "message", "message_key", "mixed"])

    print(f"[{label}] checking the counts through the API ...", flush=True)
    # The raw ceiling writes to the same tables: its acknowledged writes count too.
    created = sum(
        r["statuses"].get("201", 0) for app in ("service", "raw") for r in results["create"][app]
    )
    created_key = sum(r["statuses"].get("201", 0) for r in results["create_key"]["service"])
    sent = sum(
        r["statuses"].get("201", 0)
        for name in ("message", "message_key", "mixed")
        for app in ("service", "raw")
        for r in results[name].get(app, ())
    )
    counts = {
        "sessions_created": {
            "acknowledged": created,
            "stored": count_sessions(service.port, CREATE_AGENT),
        },
        "sessions_created_with_keys": {
            "acknowledged": created_key,
            "stored": count_sessions(service.port, CREATE_KEY_AGENT),
        },
        "messages": {"acknowledged": sent, "stored": count_messages(service.port, message_ids)},
    }
    have = config["small"] + created + created_key
    print(f"[{label}] growing to {config['large']:,} sessions through the API ...", flush=True)
    have = grow(service, config["large"], have, workdir)
    measure_latency("large")
    memory = service.worker_memory()
    return {
        "database": label,
        "scenarios": {
            name: {
                **{app: summarize(runs) for app, runs in apps.items()},
                "ratio": statistics.median(
                    s["rps"] / c["rps"]
                    for s, c in zip(apps["service"], apps["ceiling"], strict=True)
                ),
            }
            for name, apps in results.items()
        },
        # The writes against the raw ceiling, round by round: throughput and CPU per write.
        "raw": {
            name: {
                "raw": summarize(results[name]["raw"]),
                "rps": statistics.median(
                    s["rps"] / w["rps"]
                    for s, w in zip(results[name]["service"], results[name]["raw"], strict=True)
                ),
                "cpu": statistics.median(
                    s["cpu_ms"] / w["cpu_ms"]
                    for s, w in zip(results[name]["service"], results[name]["raw"], strict=True)
                    if w["cpu_ms"]
                ),
                "cpu_ms": statistics.median(s["cpu_ms"] for s in results[name]["service"]),
                "raw_cpu_ms": statistics.median(w["cpu_ms"] for w in results[name]["raw"]),
            }
            for name in RAW
        },
        # Each scenario against its plain counterpart on the service, round by round.
        "pairs": {
            name: statistics.median(
                s["rps"] / p["rps"]
                for s, p in zip(results[name]["service"], results[plain]["service"], strict=True)
            )
            for name, plain in PAIRS.items()
        },
        "list_latency": {
            size: {"sessions": n, **summarize(latency[size])}
            for size, n in (("small", config["small"]), ("large", have))
        },
        "counts": counts,
        "worker_memory_mb": {
            str(pid): {"rss": rss, "peak": peak} for pid, (rss, peak) in memory.items()
        },
    }


# -- reporting ----------------------------------------------------------------

TARGETS = {"get": 0.75, "list": 0.5, "list_next": 0.5, "create": 0.25, "message": 0.25}


def verdicts(result):
    """Return ``[(target, figure, holds, essential)]``: speed targets and correctness."""
    checks = []
    scenarios = result["scenarios"]
    for name, floor in TARGETS.items():
        ratio = scenarios[name]["ratio"]
        checks.append((f"{name} >= {floor}x ceiling", f"{ratio:.2f}x", ratio >= floor, False))
    for name in ("create", "message"):
        s = scenarios[name]["service"]
        checks.append((f"{name}: no failures", str(s["failed"]), s["failed"] == 0, True))
        checks.append((f"{name}: p99 < 100 ms", f"{s['p99_ms']:.1f} ms", s["p99_ms"] < 100, False))
    for what, count in result["counts"].items():
        exact = count["acknowledged"] == count["stored"]
        checks.append(
            (f"{what}: stored == 201s", f"{count['stored']} / {count['acknowledged']}", exact, True)
        )
    for name, figures in result["raw"].items():
        floor, most = RAW_TARGETS["rps"], RAW_TARGETS["cpu"]
        holds = figures["rps"] >= floor
        checks.append((f"{name} >= {floor}x raw SQL", f"{figures['rps']:.2f}x", holds, False))
        holds = figures["cpu"] <= most
        checks.append((f"{name} CPU <= {most}x raw SQL's", f"{figures['cpu']:.2f}x", holds, False))
    pairs = result["pairs"]
    for name in ("create_key", "message_key"):
        cost = 1 - pairs[name]
        checks.append((f"{name}: a key costs < 30 %", f"{cost:+.0%}", cost < 0.30, False))
    checks.append(("get_304 >= get", f"{pairs['get_304']:.2f}x", pairs["get_304"] >= 1.0, False))
    small, large = result["list_latency"]["small"], result["list_latency"]["large"]
    growth = large["p50_ms"] / small["p50_ms"]
    checks.append(
        (
            f"list p50 at {large['sessions']:,} vs {small['sessions']:,} <= 1.25x",
            f"{growth:.2f}x",
            growth <= 1.25,
            False,
        )
    )
    peak = max(m["peak"] for m in result["worker_memory_mb"].values())
    checks.append(("worker peak RSS < 60 MB", f"{peak:.1f} MB", peak < 60, False))
    return checks


def report(result):
    """Print one database's table and verdicts."""
    print(f"\n== {result['database']} ==")
    head = (
        f"{'scenario':<10} {'req/s':>8} {'ceiling':>8} {'ratio':>6} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'c.p50':>6} {'c.p99':>6} {'failed':>7}"
    )
    print(head)
    print("-" * len(head))
    for name, apps in result["scenarios"].items():
        s, c = apps["service"], apps["ceiling"]
        print(
            f"{name:<10} {s['rps']:>8.0f} {c['rps']:>8.0f} {apps['ratio']:>6.2f} "
            f"{s['p50_ms']:>7.2f} {s['p99_ms']:>7.2f} {c['p50_ms']:>6.2f} {c['p99_ms']:>6.2f} "
            f"{s['failed']:>7}"
        )
    print(
        "ratio: median over rounds of service/ceiling req/s; c.p50, c.p99: the ceiling's;\n"
        "failed: answers neither 2xx nor 304, socket errors and requests left unanswered"
    )
    for name, figures in result["raw"].items():
        w = figures["raw"]
        print(
            f"{name} on raw SQL: {w['rps']:.0f} req/s, p99 {w['p99_ms']:.1f} ms;"
            f" service/raw {figures['rps']:.2f}x; CPU per write {figures['cpu_ms']:.2f} ms vs "
            f"{figures['raw_cpu_ms']:.2f} ms ({figures['cpu']:.2f}x)"
        )
    for name, plain in PAIRS.items():
        print(f"{name} / {plain} (service, same rounds): {result['pairs'][name]:.2f}x")
    for figures in result["list_latency"].values():
        print(
            f"list page, 1 connection, {figures['sessions']:>7,} sessions: "
            f"p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms"
        )
    print()
    for target, figure, holds, _essential in verdicts(result):
        print(f"  [{'ok' if holds else 'MISS'}] {target:<40} {figure}")


def machine():
    """Describe where the run happened."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.platform(),
        "commit": commit,
        "load_average": os.getloadavg(),
    }


def empty_postgresql(url):
    """Create the tables in ``url``'s database and empty them."""
    from sessions_app import create_app, db, migrations

    create_app({"DATABASE_URL": url})
    migrations.upgrade()
    with db.database.connection_context():
        db.database.execute_sql(
            "TRUNCATE messages, sessions, idempotency_keys, changes, change_queue, feed_marks"
        )
    db.database.close_all()


def main():
    if not shutil.which("wrk"):
        sys.exit("The bench needs wrk: sudo apt-get install wrk  (Debian/Ubuntu)")
    config = settings()
    started = time.time()
    run = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": config,
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="sessions-bench-") as workdir:
        databases = [("sqlite", f"sqlite:///{workdir}/bench.sqlite3")]
        if os.environ.get("BENCH_DATABASE_URL"):
            empty_postgresql(os.environ["BENCH_DATABASE_URL"])
            databases.append(("postgresql", os.environ["BENCH_DATABASE_URL"]))
        for label, url in databases:
            run["results"].append(bench(label, url, config, workdir))
    run["seconds"] = round(time.time() - started)
    run["machine"]["load_average_after"] = os.getloadavg()
    m = run["machine"]
    print(
        f"\n{m['cpu']}, {m['cores']} cores, Python {m['python']}; load average "
        f"{m['load_average'][0]:.2f} before, {m['load_average_after'][0]:.2f} after; "
        f"{config['rounds']} rounds of {config['window']:g} s, {CONNECTIONS} connections"
    )
    for result in run["results"]:
        report(result)
    RESULTS.mkdir(exist_ok=True)
    stamp = run["started"].replace(":", "").replace("+0000", "Z")
    for path in (RESULTS / f"bench-{stamp}.json", RESULTS / "latest.json"):
        path.write_text(json.dumps(run, indent=2) + "\n")
    print(f"\nFigures written to {RESULTS / f'bench-{stamp}.json'} ({run['seconds']} s)")
    # A missed speed target is news, not an error (the figures move with the
    # machine's load); a failed request or a lost write is an error.
    correct = all(
        ok for result in run["results"] for _, _, ok, essential in verdicts(result) if essential
    )
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
