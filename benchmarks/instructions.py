"""Instructions per request, counted by valgrind: the service against its ceilings, in process.

``python -m benchmarks.instructions`` (``make bench-instructions``).

Requests a second on a shared machine swing with its load: over one day
the bare-Flask ceiling answered anywhere from 3,200 to 10,000 GETs a second,
and single rounds of the wrk bench moved ratios by 0.2.  The instructions a
request runs do not move: this bench counts them with callgrind, so a
change to a hot path shows its cost to the percent, whatever else the
machine is doing.

Each figure is the difference between two runs of the same process under
callgrind, one making ``SHORT`` requests and one ``LONG`` after the same
warm-up, divided by ``LONG - SHORT``: start-up and warm-up cancel out.  Each
run has a fresh copy of one migrated SQLite file.  The requests are made by
calling the WSGI app itself: no Gunicorn, no network, no kernel time (a
write's fsync costs no instructions here).  The database's own instructions
count, the same for both sides.  So this is the code a request runs in a
worker, the part the service can change.  ``make bench`` measures the rest.

What is compared (the wrk bench's pairs):

- a GET of one session, against the bare-Flask ceiling (``ceiling.py``);
- a create and a message, against the raw-SQL ceiling (``raw.py``), which
  records each write's change as the service must.

The service logs its request lines at INFO to a file and counts its metrics
(``PROMETHEUS_MULTIPROC_DIR``), as under Gunicorn.
"""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SHORT, LONG, WARM_UP = 200, 600, 200
BODIES = {
    "create": {
        "agent_id": "bench-agent",
        "task_id": "task-1",
        "prompt": "Refactor the parser module.",
        "data": {"workdir": "/src", "model": "m-1"},
    },
    "message": {"content": "Run the tests and report.", "role": "user"},
}
#: operation -> (the ceiling it is compared with, the status every answer must have)
OPERATIONS = {"get": ("ceiling", 200), "create": ("raw", 201), "message": ("raw", 201)}
_COLLECTED = re.compile(rb"Collected : (\d+)")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:])
        return
    if not shutil.which("valgrind"):
        sys.exit("This bench needs valgrind: sudo apt-get install valgrind  (Debian/Ubuntu)")
    with tempfile.TemporaryDirectory(prefix="sessions-instructions-") as folder:
        folder = Path(folder)
        template, session_id = _template(folder)
        runs = [
            (app, operation)
            for operation, (ceiling, _status) in OPERATIONS.items()
            for app in ("service", ceiling)
        ]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            counts = dict(
                zip(
                    runs,
                    pool.map(lambda run: _per_request(folder, template, session_id, *run), runs),
                    strict=True,
                )
            )
    print(
        f"Instructions per request (callgrind, in process, SQLite; {LONG} minus {SHORT} requests)"
    )
    head = f"{'operation':<10} {'service':>11} {'ceiling':>11} {'ratio':>7}  ceiling"
    print(head)
    print("-" * len(head))
    for operation, (ceiling, _status) in OPERATIONS.items():
        ours, theirs = counts["service", operation], counts[ceiling, operation]
        name = "bare Flask" if ceiling == "ceiling" else "raw SQL"
        print(f"{operation:<10} {ours:>11,} {theirs:>11,} {ours / theirs:>6.2f}x  {name}")


def _template(folder):
    """Migrate one SQLite file and store one session in it; return its path and the id."""
    path = folder / "template.sqlite3"
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_fresh(folder / "metrics"))
    from sessions_app import create_app, db, migrations

    app = create_app({"DATABASE_URL": f"sqlite:///{path}", "LOG_LEVEL": "WARNING"})
    with app.app_context():
        migrations.upgrade()
    answer = app.test_client().post("/api/sessions", json=BODIES["create"])
    assert answer.status_code == 201, answer.get_data()
    db.database.close_all()
    return path, answer.get_json()["id"]


def _per_request(folder, template, session_id, app, operation):
    counted = {}
    for count in (SHORT, LONG):
        run = folder / f"{app}-{operation}-{count}"
        run.mkdir()
        database = run / "db.sqlite3"
        shutil.copy(template, database)
        env = dict(
            os.environ,
            PYTHONHASHSEED="0",
            DATABASE_URL=f"sqlite:///{database}",
            PROMETHEUS_MULTIPROC_DIR=str(_fresh(run / "metrics")),
        )
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={run / 'callgrind.out'}",
            sys.executable,
            "-m",
            "benchmarks.instructions",
            "--child",
            app,
            operation,
            str(count),
            session_id,
            str(run / "requests.log"),
        ]
        done = subprocess.run(command, env=env, capture_output=True, check=False)
        found = _COLLECTED.search(done.stderr)
        if done.returncode != 0 or found is None:
            sys.exit(f"{app} {operation} failed:\n{done.stderr.decode(errors='replace')[-2000:]}")
        counted[count] = int(found.group(1))
    return (counted[LONG] - counted[SHORT]) // (LONG - SHORT)


def _fresh(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def _child(app_name, operation, count, session_id, log_path):
    """Make ``WARM_UP`` then ``count`` requests of ``operation`` to ``app_name``'s WSGI app."""
    app = _app(app_name, log_path)
    path = {
        "get": f"/api/sessions/{session_id}",
        "create": "/api/sessions",
        "message": f"/api/sessions/{session_id}/message",
    }[operation]
    body = json.dumps(BODIES[operation]).encode() if operation in BODIES else b""
    environ = {
        "REQUEST_METHOD": "POST" if body else "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "wrk",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if body:
        environ.update(CONTENT_TYPE="application/json", CONTENT_LENGTH=str(len(body)))
    expected = f"{OPERATIONS[operation][1]} "
    statuses = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    for _ in range(WARM_UP + int(count)):
        answer = app({**environ, "wsgi.input": io.BytesIO(body)}, start_response)
        try:
            b"".join(answer)
        finally:
            getattr(answer, "close", lambda: None)()
        if not statuses[-1].startswith(expected):
            sys.exit(f"{app_name} {operation}: {statuses[-1]}")


def _app(name, log_path):
    if name == "ceiling":
        from .ceiling import app

        return app
    if name == "raw":
        from .raw import app

        return app
    import logging
    import logging.config

    from sessions_app import create_app, logs

    # Request lines to a file, as under Gunicorn (where stdout is a file or a pipe).
    config = logs.dict_config("INFO", "json")
    config["handlers"]["stdout"] = {
        "class": "logging.FileHandler",
        "formatter": "app",
        "filename": log_path,
    }
    logging.config.dictConfig(config)
    return create_app()


if __name__ == "__main__":
    main()
