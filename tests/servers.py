"""Real processes for the real-server tests: Gunicorn, found, started and stopped by PID."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
GUNICORN = Path(sys.executable).parent / "gunicorn"
START_TIMEOUT = 30


def require(available, reason):
    """Skip the test when ``available`` is false; under CI (``CI=true``), fail instead.

    Call it at module level or in a test.  CI installs every prerequisite,
    so there a missing one is a broken run, not a test to pass over.
    """
    if available:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


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
        # The pool follows the server's own settings unless a test sets it.
        **{name: value for name, value in os.environ.items() if name != "DATABASE_POOL_SIZE"},
        "GUNICORN_CONTROL_SOCKET": str(run_dir / "gunicorn.ctl"),
        "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "prometheus"),
        "LOG_FORMAT": "json",
        **env,
    }
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
            # Waited for, not given up on: a worker still booting answers an
            # abandoned request later all the same (and counts it in /metrics).
            remaining = max(0.1, deadline - time.monotonic())
            if requests.get(url, timeout=remaining, **kwargs).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet
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


class TcpProxy:
    """Forward a free loopback port to ``(host, port)`` until ``cut()``.

    ``cut()`` closes the listening socket and every forwarded connection: to
    a client the server behind it is gone, as in a network outage.
    """

    def __init__(self, host, port):
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.open = []
        self.lock = threading.Lock()
        self.cutting = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while not self.cutting.is_set():
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target, timeout=5)
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream.settimeout(None)
            with self.lock:
                if self.cutting.is_set():
                    client.close()
                    upstream.close()
                    return
                self.open += [client, upstream]
                for source, sink in ((client, upstream), (upstream, client)):
                    thread = threading.Thread(target=self._pipe, args=(source, sink), daemon=True)
                    self.threads.append(thread)
                    thread.start()

    def _pipe(self, source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self):
        """Stop forwarding: refuse new connections and drop the open ones."""
        self.cutting.set()
        self.listener.close()
        with self.lock:
            for sock in self.open:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        for thread in self.threads:
            thread.join(timeout=5)
