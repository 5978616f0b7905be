"""gunicorn.conf.py: the master loads no app code, and its hooks work without it.

A gevent worker monkey-patches when it starts; whatever the master imported
before the fork (peewee, psycopg, Flask, prometheus_client) would keep the
unpatched locks and sockets.  So the config and the master's hooks must not
import them.
"""

import json
import runpy
import sqlite3
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest
from servers import ROOT, start_gunicorn

CONF = ROOT / "gunicorn.conf.py"

# Loaded only by a worker, never by the master.
WORKER_ONLY = (
    "flask",
    "werkzeug",
    "peewee",
    "playhouse",
    "psycopg",
    "prometheus_client",
    "marshmallow",
    "sessions_app.db",
    "sessions_app.factory",
)

MASTER = """
import json, runpy, sys, types

class Log:
    warnings = []
    def warning(self, message, *args):
        self.warnings.append(message % args)

cfg = types.SimpleNamespace(address=[("0.0.0.0", 8000)], reuse_port=False)
server = types.SimpleNamespace(cfg=cfg, log=Log())
conf = runpy.run_path("gunicorn.conf.py")
conf["on_starting"](server)
conf["when_ready"](server)
conf["child_exit"](server, types.SimpleNamespace(pid=4242))
print(json.dumps({"modules": sorted(sys.modules), "warnings": Log.warnings}))
"""


def master_environ(run, **values):
    return {
        "PATH": "/usr/bin:/bin",
        "PROMETHEUS_MULTIPROC_DIR": str(run / "prometheus"),
        "DATABASE_URL": f"sqlite:///{run}/sessions.sqlite3",
        **values,
    }


def test_the_master_and_its_hooks_load_no_app_code(tmp_path):
    (tmp_path / "prometheus").mkdir()
    (tmp_path / "prometheus" / "counter_123.db").write_bytes(b"from a previous run")
    done = subprocess.run(
        [sys.executable, "-c", MASTER],
        cwd=ROOT,
        env=master_environ(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = json.loads(done.stdout.splitlines()[-1])
    loaded = set(seen["modules"])
    assert {"sessions_app", "sessions_app.config", "sessions_app.logs"} <= loaded
    assert "sessions_app.exposure" in loaded  # when_ready ran
    assert sorted(m for m in loaded if m.split(".")[0] in WORKER_ONLY or m in WORKER_ONLY) == []
    # on_starting still did its work: the metrics folder emptied, the schema made.
    assert list((tmp_path / "prometheus").iterdir()) == []
    with sqlite3.connect(tmp_path / "sessions.sqlite3") as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"sessions", "messages"} <= tables
    (warning,) = seen["warnings"]
    assert warning.startswith("SESSIONS_API_TOKENS is not set") and "0.0.0.0:8000" in warning


@pytest.fixture
def conf(tmp_path, monkeypatch):
    """gunicorn.conf.py's names, loaded here with the environment of a start in ``tmp_path``."""
    for name, value in master_environ(tmp_path).items():
        if name != "PATH":
            monkeypatch.setenv(name, value)
    return runpy.run_path(str(CONF))


def test_the_pool_has_a_connection_per_request_thread_unless_told(conf, monkeypatch):
    from sessions_app import config

    # A waiting slot has a thread of its own but holds no connection.
    assert conf["threads"] == 2 + 500
    assert config.load()["DATABASE_POOL_SIZE"] == 2
    monkeypatch.setenv("GUNICORN_THREADS", "6")
    monkeypatch.setenv("FEED_WAITERS_MAX", "10")
    assert runpy.run_path(str(CONF))["threads"] == 16
    assert config.load()["DATABASE_POOL_SIZE"] == 6
    monkeypatch.setenv("DATABASE_POOL_SIZE", "3")
    assert config.load()["DATABASE_POOL_SIZE"] == 3


def test_a_failed_schema_step_stops_the_start_with_its_message(conf, tmp_path, monkeypatch):
    # A folder where the database file should be: SQLite cannot open it.
    (tmp_path / "sessions.sqlite3").mkdir()
    with pytest.raises(RuntimeError) as raised:
        server = types.SimpleNamespace(cfg=types.SimpleNamespace(address=[], reuse_port=True))
        conf["on_starting"](server)
    message = str(raised.value)
    assert message.startswith("flask --app sessions_app init-db failed:\n")
    assert "unable to open database file" in message


def test_a_gone_worker_loses_only_its_own_live_gauges(conf, tmp_path):
    folder = tmp_path / "prometheus"
    folder.mkdir()
    names = [
        "gauge_livesum_4242.db",
        "gauge_liveall_4242.db",
        "gauge_livesum_42.db",
        "gauge_all_4242.db",
        "counter_4242.db",
    ]
    for name in names:
        (folder / name).write_bytes(b"")
    conf["child_exit"](None, types.SimpleNamespace(pid=4242))
    assert sorted(p.name for p in folder.iterdir()) == sorted(names[2:])


@pytest.mark.server
def test_gunicorn_stops_when_the_schema_step_fails():
    with tempfile.TemporaryDirectory(prefix="sessions-no-schema-") as folder:
        run = Path(folder)
        (run / "sessions.sqlite3").mkdir()
        gunicorn = start_gunicorn(
            run, BIND="127.0.0.1:0", DATABASE_URL=f"sqlite:///{run}/sessions.sqlite3"
        )
        try:
            assert gunicorn.wait(timeout=60) == 1
        finally:
            if gunicorn.poll() is None:
                gunicorn.kill()
                gunicorn.wait()
        log = (run / "gunicorn.log").read_text()
    assert "Error: flask --app sessions_app init-db failed:" in log
    assert "unable to open database file" in log
    assert "Booting worker" not in log
