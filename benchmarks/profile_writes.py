"""Profile the writes in process: ``python -m benchmarks.profile_writes [N]``.

Runs N creates, N messages, N PATCHes and N DELETEs (default 2,000 each)
through Flask's test client on a fresh database, each operation under its
own ``cProfile``, and prints each one's time per request with and without
the profiler, and its costliest functions (own time).  The app logs its
request lines at INFO to a file, as in production.

Environment: ``BENCH_DATABASE_URL`` (default: a temporary SQLite file; a
PostgreSQL database's tables are EMPTIED first), ``PROFILE_APP=raw`` (the
raw-SQL ceiling's creates and messages instead, for comparison), ``PROFILE_TOP`` (functions
shown per operation, default 25), ``PROFILE_OUT`` (a folder to write each
operation's ``.prof`` into, for ``python -m pstats`` or snakeviz).
"""

import cProfile
import io
import logging
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    top = int(os.environ.get("PROFILE_TOP", "25"))
    out = os.environ.get("PROFILE_OUT")
    with tempfile.TemporaryDirectory(prefix="sessions-profile-") as folder:
        url = os.environ.get("BENCH_DATABASE_URL") or f"sqlite:///{folder}/profile.sqlite3"
        if url.startswith("postgres"):
            from .run import empty_postgresql

            empty_postgresql(url)
        from sessions_app import create_app, db, migrations

        app = create_app({"DATABASE_URL": url, "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"})
        migrations.upgrade()
        # Request lines to a file, as a server writes them (not to the terminal).
        handler = logging.FileHandler(Path(folder) / "requests.log")
        root = logging.getLogger()
        for old in root.handlers[:]:
            handler.setFormatter(old.formatter)
            root.removeHandler(old)
        root.addHandler(handler)
        client = app.test_client()
        if os.environ.get("PROFILE_APP") == "raw":
            # The raw-SQL ceiling (benchmarks/raw.py) on the same database.
            os.environ["DATABASE_URL"] = url
            from . import raw

            client = raw.app.test_client()
        body = {
            "agent_id": "profile",
            "task_id": "t-1",
            "prompt": "Write the release notes.",
            "data": {"workdir": "/src"},
        }
        ids = [client.post("/api/sessions", json=body).get_json()["id"] for _ in range(count)]
        operations = {
            "create": lambda n: client.post("/api/sessions", json=body),
            "message": lambda n: client.post(
                f"/api/sessions/{ids[n]}/message",
                json={"content": "Run the tests and report.", "role": "user"},
            ),
            "patch": lambda n: client.patch(
                f"/api/sessions/{ids[n]}", json={"data": {"step": n}, "status": "completed"}
            ),
            "delete": lambda n: client.delete(f"/api/sessions/{ids[n]}"),
        }
        expected = {"create": 201, "message": 201, "patch": 200, "delete": 204}
        if os.environ.get("PROFILE_APP") == "raw":
            del operations["patch"], operations["delete"]
        print(f"{url.split('://')[0]}, {count} requests each; µs per request (CPU: the process's)")
        for name, call in operations.items():
            # Without the profiler first, then the same number again under it.
            started, cpu = time.perf_counter(), time.process_time()
            for n in range(count // 2):
                status = call(n).status_code
                assert status == expected[name], (name, status)
            plain = (time.perf_counter() - started) / (count // 2) * 1e6
            cpu = (time.process_time() - cpu) / (count // 2) * 1e6
            profile = cProfile.Profile()
            started = time.perf_counter()
            profile.enable()
            for n in range(count // 2, count):
                call(n)
            profile.disable()
            profiled = (time.perf_counter() - started) / (count - count // 2) * 1e6
            print(
                f"\n== {name}: {plain:.0f} µs plain ({cpu:.0f} µs CPU), "
                f"{profiled:.0f} µs under cProfile =="
            )
            text = io.StringIO()
            stats = pstats.Stats(profile, stream=text)
            stats.sort_stats("tottime").print_stats(top)
            print(_trim(text.getvalue()))
            if out:
                stats.dump_stats(Path(out) / f"{name}.prof")
        db.database.close_all()


def _trim(report):
    """Keep the table of a pstats report, with paths shortened to the package."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("ncalls"))
    keep = [lines[i] for i in range(start, len(lines)) if lines[i].strip()]
    return "\n".join(
        line.replace(str(Path(sys.prefix)), "venv").replace(os.getcwd() + "/", "") for line in keep
    )


if __name__ == "__main__":
    main()
