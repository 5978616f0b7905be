"""Gunicorn servers for the bench: started on a free port, stopped by PID."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).with_name("gunicorn")


def free_port():
    """Return a TCP port the OS says is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pids):
    """Return the CPU time (user and system) the processes ``pids`` have used so far.

    A process that is gone counts for nothing.
    """
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        # Fields 14 and 15 (utime, stime), counted after the command's ")".
        fields = stat.rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class Server:
    """One Gunicorn master, run with the project's gunicorn.conf.py."""

    def __init__(self, name, app, workdir, database_url):
        self.name, self.app, self.workdir = name, app, Path(workdir)
        self.database_url = database_url
        self.process = None
        self.port = None

    def start(self):
        """Start the server and wait until ``/health`` answers."""
        self.port = free_port()
        env = dict(
            os.environ,
            BIND=f"127.0.0.1:{self.port}",
            GUNICORN_CONTROL_SOCKET=str(self.workdir / f"{self.name}.ctl"),
            DATABASE_URL=self.database_url,
            PROMETHEUS_MULTIPROC_DIR=str(self.workdir / f"{self.name}-metrics"),
        )
        # The log, request lines included, goes to a file as it would in production.
        with open(self.workdir / f"{self.name}.log", "ab") as log:
            self.process = subprocess.Popen(
                [str(GUNICORN), "-c", "gunicorn.conf.py", self.app],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.workdir / self.name}.log")
            try:
                if Client(self.port).call("GET", "/health")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer within 30 s")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self):
        """Return the PIDs of the master's worker processes."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]

    def worker_memory(self):
        """Return ``{pid: (resident MB, peak resident MB)}`` for each worker."""
        memory = {}
        for pid in self.worker_pids():
            status = dict(
                line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            )
            memory[pid] = tuple(int(status[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM"))
        return memory

    def cpu_seconds(self):
        """Return the CPU time (user and system) the workers have used so far."""
        return cpu_seconds(self.worker_pids())

    def stop(self):
        """Stop the master (and so its workers) by PID, gracefully."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Client:
    """A keep-alive HTTP/1.1 JSON client for seeding and checking."""

    def __init__(self, port):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method, path, body=None):
        """Send a request; return ``(status, decoded JSON or None)``."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        payload = None if body is None else json.dumps(body)
        self.connection.request(method, path, body=payload, headers=headers)
        response = self.connection.getresponse()
        data = response.read()
        return response.status, (json.loads(data) if data else None)
