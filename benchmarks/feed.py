"""The change feed under load: ``make bench-feed`` (also run by ``make bench``).

With the default deployment (gunicorn.conf.py) on one database:

1. wrk's get and message load, alone and while 1,000 long polls (``wait=30``)
   and 100 event streams are held open, in alternating rounds: the ratio of
   the two is what the waiters cost ordinary requests;
2. commit to waiter: a waiter follows one session with a long poll and a
   writer sends it a message; the time from sending the message to the
   waiter's answer (an upper bound of commit to waiter), with the waiters
   above still held;
3. on PostgreSQL, the same across two instances (waiter on one, writer on
   the other);
4. a feed page of 100 changes against a list page of 100 sessions (wrk);
5. each worker's memory with the waiters held.

The waiters follow sessions no one writes to (each long poll its own
session, each stream an agent with no sessions), so they hold their slots
and wake only for heartbeats and their own 30 s timeouts.

Environment: BENCH_QUICK=1 (shorter), BENCH_ROUNDS, BENCH_WINDOW, BENCH_DATABASE_URL
(as ``make bench``: its tables are EMPTIED first), BENCH_POLLS, BENCH_STREAMS.
"""

import asyncio
import datetime
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from .run import RESULTS, empty_postgresql, machine, seed, wrk
from .servers import Client, Server

POLLS = int(os.environ.get("BENCH_POLLS", "1000"))
STREAMS = int(os.environ.get("BENCH_STREAMS", "100"))
CONNECTIONS = 16
LATENCY_SAMPLES = 200


def settings():
    quick = os.environ.get("BENCH_QUICK") == "1"
    return {
        "rounds": int(os.environ.get("BENCH_ROUNDS", 2 if quick else 4)),
        "window": int(os.environ.get("BENCH_WINDOW", 2 if quick else 3)),
        "samples": 50 if quick else LATENCY_SAMPLES,
    }


# -- the waiters: one thread, one event loop, every connection ------------------


class Waiters:
    """Hold long polls and streams open from one thread; count what they get."""

    def __init__(self, port, poll_paths, stream_paths):
        self.port = port
        self.poll_paths, self.stream_paths = poll_paths, stream_paths
        self.statuses = {}
        self.errors = []
        self.open_polls = 0
        self.open_streams = 0
        self.stop = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),))

    def start(self):
        self.thread.start()
        return self

    def close(self):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(60)

    def count(self, status):
        self.statuses[status] = self.statuses.get(status, 0) + 1

    async def _run(self):
        self.stop = asyncio.Event()
        tasks = [asyncio.create_task(self._poll(path)) for path in self.poll_paths]
        tasks += [asyncio.create_task(self._stream(path)) for path in self.stream_paths]
        await self.stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _connect(self):
        for attempt in range(50):
            try:
                return await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05 * (attempt + 1))
        raise OSError("could not connect")

    async def _poll(self, path):
        try:
            reader, writer = await self._connect()
            request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
            while not self.stop.is_set():
                writer.write(request)
                self.open_polls += 1
                try:
                    status, _headers, _body = await read_response(reader)
                finally:
                    self.open_polls -= 1
                self.count(status)
                if status != 200:
                    await asyncio.sleep(1)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - counted and reported
            self.errors.append(repr(exc))

    async def _stream(self, path):
        try:
            reader, writer = await self._connect()
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode()
            )
            line = await reader.readline()
            status = int(line.split()[1])
            self.count(status)
            self.open_streams += 1
            try:
                while await reader.readline():
                    pass
            finally:
                self.open_streams -= 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - counted and reported
            self.errors.append(repr(exc))


async def read_response(reader):
    """Read one HTTP/1.1 response (Content-Length or chunked); return (status, headers, body)."""
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = b""
        while size := int((await reader.readline()).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
    return status, headers, body


def wait_until(check, seconds, what):
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


# -- commit to waiter ---------------------------------------------------------------


def commit_to_waiter(wait_port, write_port, session_ids, samples):
    """Return the times (ms) from sending a message to a waiter's answer with it."""
    times = []
    writer = Client(write_port)
    for n in range(samples):
        session_id = session_ids[n % len(session_ids)]
        waiter = Client(wait_port)
        path = f"/api/changes?cursor=latest&session_id={session_id}&wait=10"
        got = {}

        def wait(path=path, waiter=waiter, got=got):
            got["answer"] = waiter.call("GET", path)
            got["at"] = time.perf_counter()

        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(0.05)  # the waiter is waiting
        sent = time.perf_counter()
        status, _ = writer.call(
            "POST", f"/api/sessions/{session_id}/message", {"content": f"latency {n}"}
        )
        thread.join()
        if status != 201 or not got["answer"][1]["changes"]:
            raise RuntimeError(
                f"latency sample {n}: {status}, {got['answer']} after "
                f"{got['at'] - sent:.3f} s from the write"
            )
        times.append((got["at"] - sent) * 1000)
    return times


def percentiles(times):
    ordered = sorted(times)
    return {
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "max_ms": ordered[-1],
        "samples": len(ordered),
    }


# -- the run ---------------------------------------------------------------------------


def bench(label, database_url, config, workdir):
    service = Server("service", "wsgi:app", workdir, database_url).start()
    others = []
    try:
        return _scenarios(label, service, others, database_url, config, workdir)
    finally:
        for server in [service, *others]:
            server.stop()


def _scenarios(label, service, others, database_url, config, workdir):
    rounds, window = config["rounds"], config["window"]
    print(f"[{label}] seeding sessions ...", flush=True)
    targets = seed(service.port, ["feed-bench"], 100)
    quiet = seed(service.port, ["feed-quiet"], 1000)
    latency_sessions = seed(service.port, ["feed-latency"], 20)
    body = '{"content": "Run the tests and report.", "role": "user"}'
    load = {
        "get": [f"GET /api/sessions/{sid}" for sid in quiet],
        "message": [f"POST /api/sessions/{sid}/message\t{body}" for sid in targets],
    }
    client = Client(service.port)
    newest = client.call("GET", "/api/changes?cursor=latest")[1]["next_cursor"]
    start = max(0, int(newest) - 500)
    pages = {
        "feed_page": [f"GET /api/changes?cursor={start}&limit=100"],
        "list_page": ["GET /api/sessions?limit=100"],
    }

    results = {name: {"alone": [], "waiters": []} for name in load}

    def run_load(kind):
        for name, lines in load.items():
            results[name][kind].append(wrk(service.url, lines, window, CONNECTIONS, workdir))

    print(f"[{label}] {rounds} rounds of get and message, alone ...", flush=True)
    run_load("alone")
    polls = [
        f"/api/changes?cursor=latest&session_id={quiet[n % len(quiet)]}&wait=30"
        for n in range(POLLS)
    ]
    streams = [f"/api/changes?agent_id=feed-nobody-{n}" for n in range(STREAMS)]
    waiters = Waiters(service.port, polls, streams).start()
    try:
        wait_until(
            lambda: waiters.open_polls >= POLLS and waiters.open_streams >= STREAMS,
            60,
            "the waiters to connect",
        )
        time.sleep(1)
        memory = service.worker_memory()
        for r in range(rounds):
            run_load("waiters")
            if r + 1 < rounds:
                run_load("alone")
            print(f"[{label}] round {r + 1}/{rounds} done", flush=True)
        print(f"[{label}] commit to waiter, {config['samples']} samples ...", flush=True)
        one_host = commit_to_waiter(service.port, service.port, latency_sessions, config["samples"])
        two_hosts = None
        if database_url.startswith("postgres"):
            second = Server("second", "wsgi:app", workdir, database_url).start()
            others.append(second)
            two_hosts = commit_to_waiter(
                service.port, second.port, latency_sessions, config["samples"]
            )
        memory_after = service.worker_memory()
        held = {"polls": waiters.open_polls, "streams": waiters.open_streams}
    finally:
        waiters.close()
    page_runs = {name: [] for name in pages}
    for _ in range(rounds):
        for name, lines in pages.items():
            page_runs[name].append(wrk(service.url, lines, window, CONNECTIONS, workdir))
    return {
        "database": label,
        "load": {
            name: {
                kind: {
                    "rps": statistics.median(r["rps"] for r in runs),
                    "p99_ms": statistics.median(r["p99_us"] for r in runs) / 1000,
                    "failed": sum(r["failed"] for r in runs),
                }
                for kind, runs in kinds.items()
            }
            for name, kinds in results.items()
        },
        "ratios": {
            name: statistics.median(
                w["rps"] / a["rps"] for w, a in zip(kinds["waiters"], kinds["alone"], strict=False)
            )
            for name, kinds in results.items()
        },
        "waiters": {
            "held_at_end": held,
            "statuses": waiters.statuses,
            "errors": waiters.errors[:10],
            "error_count": len(waiters.errors),
        },
        "commit_to_waiter": {
            "one_host": percentiles(one_host),
            **({"two_hosts": percentiles(two_hosts)} if two_hosts else {}),
        },
        "pages": {
            name: {
                "rps": statistics.median(r["rps"] for r in runs),
                "p50_ms": statistics.median(r["p50_us"] for r in runs) / 1000,
            }
            for name, runs in page_runs.items()
        },
        "worker_memory_mb": {
            str(pid): {"rss": rss, "peak": peak} for pid, (rss, peak) in memory_after.items()
        },
        "worker_memory_mb_at_hold": {str(pid): rss for pid, (rss, _peak) in memory.items()},
    }


def verdicts(result):
    checks = []
    for name, ratio in result["ratios"].items():
        checks.append((f"{name} with waiters >= 0.8x alone", f"{ratio:.2f}x", ratio >= 0.8, False))
        failed = sum(k["failed"] for k in result["load"][name].values())
        checks.append((f"{name}: no failures", str(failed), failed == 0, True))
    held = result["waiters"]["held_at_end"]
    bad = sum(n for status, n in result["waiters"]["statuses"].items() if status != 200)
    checks.append(
        (
            f"{POLLS} polls + {STREAMS} streams held, none refused",
            f"{held['polls']} + {held['streams']}, {bad} non-200, "
            f"{result['waiters']['error_count']} errors",
            held == {"polls": POLLS, "streams": STREAMS}
            and not bad
            and not result["waiters"]["error_count"],
            True,
        )
    )
    one = result["commit_to_waiter"]["one_host"]
    checks.append(
        ("commit to waiter p50 < 20 ms", f"{one['p50_ms']:.1f} ms", one["p50_ms"] < 20, False)
    )
    checks.append(
        ("commit to waiter p99 < 100 ms", f"{one['p99_ms']:.1f} ms", one["p99_ms"] < 100, False)
    )
    two = result["commit_to_waiter"].get("two_hosts")
    if two:
        checks.append(
            ("two instances p99 < 250 ms", f"{two['p99_ms']:.1f} ms", two["p99_ms"] < 250, False)
        )
    feed, listed = result["pages"]["feed_page"], result["pages"]["list_page"]
    checks.append(
        (
            "feed page of 100 >= list page of 100",
            f"{feed['rps']:.0f} vs {listed['rps']:.0f} req/s",
            feed["rps"] >= listed["rps"],
            False,
        )
    )
    peak = max(m["rss"] for m in result["worker_memory_mb"].values())
    checks.append(("worker RSS with the waiters < 100 MB", f"{peak:.1f} MB", peak < 100, False))
    return checks


def report(result):
    print(f"\n== feed, {result['database']} ==")
    for name, kinds in result["load"].items():
        alone, loaded = kinds["alone"], kinds["waiters"]
        print(
            f"{name:<8} alone {alone['rps']:>7.0f} req/s (p99 {alone['p99_ms']:.1f} ms), "
            f"with waiters {loaded['rps']:>7.0f} req/s (p99 {loaded['p99_ms']:.1f} ms), "
            f"ratio {result['ratios'][name]:.2f}"
        )
    for where, figures in result["commit_to_waiter"].items():
        print(
            f"commit to waiter, {where}: p50 {figures['p50_ms']:.1f} ms, p99 "
            f"{figures['p99_ms']:.1f} ms, max {figures['max_ms']:.1f} ms "
            f"({figures['samples']} samples)"
        )
    for name, figures in result["pages"].items():
        print(f"{name:<10} {figures['rps']:>7.0f} req/s, p50 {figures['p50_ms']:.2f} ms")
    rss = ", ".join(f"{m['rss']:.1f}" for m in result["worker_memory_mb"].values())
    print(f"worker RSS with the waiters held: {rss} MB")
    print()
    for target, figure, holds, _essential in verdicts(result):
        print(f"  [{'ok' if holds else 'MISS'}] {target:<44} {figure}")


def main():
    config = settings()
    started = time.time()
    run = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {**config, "polls": POLLS, "streams": STREAMS},
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="sessions-bench-feed-") as workdir:
        databases = [("sqlite", f"sqlite:///{workdir}/bench.sqlite3")]
        if os.environ.get("BENCH_DATABASE_URL"):
            empty_postgresql(os.environ["BENCH_DATABASE_URL"])
            databases.append(("postgresql", os.environ["BENCH_DATABASE_URL"]))
        for label, url in databases:
            run["results"].append(bench(label, url, config, Path(workdir)))
    run["seconds"] = round(time.time() - started)
    run["machine"]["load_average_after"] = os.getloadavg()
    for result in run["results"]:
        report(result)
    RESULTS.mkdir(exist_ok=True)
    stamp = run["started"].replace(":", "").replace("+0000", "Z")
    for path in (RESULTS / f"feed-{stamp}.json", RESULTS / "feed-latest.json"):
        path.write_text(json.dumps(run, indent=2) + "\n")
    print(f"\nFigures written to {RESULTS / f'feed-{stamp}.json'} ({run['seconds']} s)")
    correct = all(
        ok for result in run["results"] for _, _, ok, essential in verdicts(result) if essential
    )
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
