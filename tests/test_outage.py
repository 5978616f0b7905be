"""The database stops in the middle of a load and comes back: 503s with
Retry-After while it is down, the same workers serve again once it is up,
and every acknowledged write is there afterwards.

PostgreSQL here is a cluster of the test's own (initdb into a temporary
folder, on a free port), so stopping it harms nothing else.  Run with
``pytest -s -m server tests/test_outage.py`` to see the figures.
"""

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from servers import free_port, require, serving, worker_pids

pytestmark = pytest.mark.server

CLIENTS = 6
WORKERS = 2
BEFORE, DOWN, AFTER = 2.0, 3.0, 3.0  # seconds of load before, during and after the outage
CLIENT_TIMEOUT = 25  # below Gunicorn's 30 s timeout: a request that needs longer hung


def server_binaries():
    """Return the folder of PostgreSQL's server programs (any version), or None."""
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
    folder = Path(found.stdout.strip())
    return folder if found.returncode == 0 and (folder / "initdb").exists() else None


PG_BIN = server_binaries()
require(PG_BIN, "no PostgreSQL server programs: 'pg_config --bindir' names no folder with initdb")
require(
    os.geteuid() != 0 or shutil.which("runuser"),
    "initdb refuses to run as root and runuser is missing",
)


class Cluster:
    """A PostgreSQL cluster in ``folder``, run as the postgres user when we are root."""

    def __init__(self, folder):
        self.folder = folder
        self.data = folder / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.as_owner = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(folder, owner.pw_uid, owner.pw_gid)
            self.as_owner = ["runuser", "-u", "postgres", "--"]

    def run(self, program, *args):
        command = [*self.as_owner, str(PG_BIN / program), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def create(self):
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.folder}'\n"
                "max_connections = 30\n"
                "shared_buffers = 16MB\n"
            )

    def start(self):
        log = str(self.folder / "postgres.log")
        self.run("pg_ctl", "-D", str(self.data), "-l", log, "-w", "-t", "60", "start")

    def stop(self):
        self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")


class Load:
    """Clients that create sessions and send them messages until told to stop."""

    def __init__(self, base):
        self.base = base
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.results = []  # (started, finished, status or exception text)
        self.sessions = set()  # acknowledged (201) session ids
        self.messages = []  # acknowledged (201) (session id, message id)
        self.bad_503s = []
        self.threads = [threading.Thread(target=self.client) for _ in range(CLIENTS)]

    def start(self):
        for thread in self.threads:
            thread.start()

    def stop(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def client(self):
        http = requests.Session()
        session_id = None
        while not self.stopping.is_set():
            if session_id is None:
                response = self.call(http, "POST", "/api/sessions", {"agent_id": "outage"})
                if response is not None and response.status_code == 201:
                    session_id = response.json()["id"]
                    with self.lock:
                        self.sessions.add(session_id)
            else:
                path = f"/api/sessions/{session_id}/message"
                response = self.call(http, "POST", path, {"content": "during the load"})
                if response is not None and response.status_code == 201:
                    with self.lock:
                        self.messages.append((session_id, response.json()["message_id"]))
            if response is None or response.status_code == 503:
                time.sleep(0.05)  # a client honours Retry-After, if not to the letter

    def call(self, http, method, path, body):
        started = time.monotonic()
        try:
            response = http.request(method, self.base + path, json=body, timeout=CLIENT_TIMEOUT)
        except requests.RequestException as exc:
            outcome, response = f"{type(exc).__name__}: {exc}", None
        else:
            outcome = response.status_code
            if outcome == 503 and not is_retry_later(response):
                self.bad_503s.append(response.text)
        with self.lock:
            self.results.append((started, time.monotonic(), outcome))
        return response


def is_retry_later(response):
    """Tell whether a 503 is the service's problem document with a Retry-After."""
    return (
        response.headers.get("Content-Type") == "application/problem+json"
        and response.headers.get("Retry-After", "").isdigit()
        and response.json()["status"] == 503
    )


@pytest.fixture
def cluster():
    folder = Path(tempfile.mkdtemp(prefix="sessions-outage-pg-"))
    cluster = Cluster(folder)
    try:
        cluster.create()
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def server(cluster):
    """Gunicorn on the test's own cluster: yield (base URL, master process)."""
    with tempfile.TemporaryDirectory(prefix="sessions-outage-") as folder:
        run = Path(folder)
        with serving(
            run, DATABASE_URL=cluster.url, WEB_CONCURRENCY=str(WORKERS), GUNICORN_THREADS="4"
        ) as (base, gunicorn):
            yield base, gunicorn, run / "gunicorn.log"


def test_a_database_outage_is_503_then_recovers_without_losing_a_write(cluster, server):
    base, gunicorn, log_path = server
    workers = all_workers(gunicorn.pid)
    load = Load(base)
    load.start()
    try:
        time.sleep(BEFORE)
        cluster.stop()
        stopped = time.monotonic()
        health = requests.get(f"{base}/health", timeout=CLIENT_TIMEOUT)
        time.sleep(max(0.0, DOWN - (time.monotonic() - stopped)))
        cluster.start()
        restarted = time.monotonic()
        time.sleep(AFTER)
    finally:
        load.stop()

    outcomes = Counter(outcome for _, _, outcome in load.results)
    first_ok = min(
        (finished for started, finished, outcome in load.results
         if started >= restarted and outcome in (200, 201)),
        default=None,
    )  # fmt: skip
    slowest = max(finished - started for started, finished, _ in load.results)
    print(
        f"\n[outage] {len(load.results)} requests: {dict(outcomes)}; database down "
        f"{restarted - stopped:.1f} s; first success {first_ok - restarted:.2f} s after it "
        f"was back; slowest request {slowest:.2f} s; {len(load.sessions)} sessions and "
        f"{len(load.messages)} messages acknowledged"
        if first_ok
        else f"\n[outage] no success after the database came back: {dict(outcomes)}"
    )

    assert set(outcomes) <= {201, 503}, outcomes
    assert outcomes[503] > 0, "the outage went unnoticed: the test tested nothing"
    assert load.bad_503s == []
    assert health.status_code == 503 and is_retry_later(health)
    assert first_ok is not None, "no request succeeded after the database came back"
    assert worker_pids(gunicorn.pid) == workers, "workers were restarted"
    assert requests.get(f"{base}/health", timeout=10).status_code == 200
    assert_all_acknowledged_writes_are_there(base, load)
    assert "Traceback" not in log_path.read_text()


def all_workers(master_pid, expected=WORKERS):
    """Return the worker PIDs once all ``expected`` workers have started."""
    deadline = time.monotonic() + 30
    while len(workers := worker_pids(master_pid)) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(workers) == expected, workers
    return workers


def assert_all_acknowledged_writes_are_there(base, load):
    stored = {}
    for session_id in load.sessions:
        assert requests.get(f"{base}/api/sessions/{session_id}", timeout=10).status_code == 200
        stored[session_id] = set()
        params = {"limit": 1000}
        while True:
            page = requests.get(
                f"{base}/api/sessions/{session_id}/messages", params=params, timeout=10
            ).json()
            stored[session_id].update(message["message_id"] for message in page["messages"])
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
    lost = [(s, m) for s, m in load.messages if m not in stored[s]]
    assert lost == [], f"{len(lost)} acknowledged messages are missing"
