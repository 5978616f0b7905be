"""Real processes for the real-server tests: Gunicorn, found, started and stopped by PID."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
GUNICORN = Path(sys.executable).parent / "gunicorn"
START_TIMEOUT = 30


def free_port():
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_gunicorn(run_dir, **env):
    """Start Gunicorn with ``gunicorn.conf.py`` and ``env``; return the process.

    Its log (the app's JSON lines too) goes to ``run_dir / "gunicorn.log"``.
    """
    environ = {
        **os.environ,
        "GUNICORN_CONTROL_SOCKET": str(run_dir / "gunicorn.ctl"),
        "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "prometheus"),
        "LOG_FORMAT": "json",
        **env,
    }
    environ.pop("DATABASE_POOL_SIZE", None)
    with open(run_dir / "gunicorn.log", "wb") as log:
        return subprocess.Popen(
            [str(GUNICORN), "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@contextmanager
def serving(run_dir, **env):
    """Run Gunicorn on a free loopback port until the block ends; yield (base URL, process)."""
    base_url = f"http://127.0.0.1:{free_port()}"
    process = start_gunicorn(run_dir, BIND=base_url.removeprefix("http://"), **env)
    try:
        wait_for(f"{base_url}/health", process, run_dir / "gunicorn.log")
        yield base_url, process
    finally:
        stop(process)


def wait_for(url, process, log_path, **kwargs):
    """Wait until ``url`` answers 200 while ``process`` runs."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"{process.args[0]} exited with {process.returncode}:\n{log_path.read_text()}"
            )
        try:
            if requests.get(url, timeout=2, **kwargs).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} did not answer 200 in {START_TIMEOUT}s:\n{log_path.read_text()}")


def stop(process, sig=signal.SIGTERM):
    """Send ``sig``, wait for the process to exit, SIGKILL it if it does not."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def log_lines(log_path):
    """Return the JSON lines of a Gunicorn log, as dicts."""
    lines = []
    for text in log_path.read_text().splitlines():
        if text.startswith("{"):
            lines.append(json.loads(text))
    return lines


def request_line(log_path, request_id):
    """Return the app's request line for ``request_id``."""
    found = [
        line
        for line in log_lines(log_path)
        if line.get("logger") == "sessions_app.requests" and line.get("request_id") == request_id
    ]
    assert len(found) == 1, found
    return found[0]


def worker_pids(master_pid):
    """Return the PIDs of the processes whose parent is ``master_pid``."""
    children = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name (in parentheses) may hold spaces: split after it.
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == master_pid:
            children.add(int(entry))
    return children
