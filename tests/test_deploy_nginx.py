"""deploy/nginx.conf and deploy/sessions-app.service, run for real: nginx in
front of Gunicorn on a unix socket, every endpoint through it.

Only the listen address and the /run and /var/log folders of the deploy files
are changed (to a free loopback port and temporary folders); a second, TLS
listener shows the scheme the service sees is the one nginx forwards.
"""

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests
from servers import ROOT, free_port, request_line, require, start_gunicorn, stop, wait_for

pytestmark = pytest.mark.server

NGINX = Path("/usr/sbin/nginx")
DEPLOY = ROOT / "deploy"
TOKEN = "e2e-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 1_048_576
SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}").fullmatch
#: The stream heartbeat of the deployed service here, in seconds (15 by default).
HEARTBEAT = 2

require(NGINX.exists(), "nginx is not installed (apt-get install nginx)")
require(shutil.which("openssl"), "openssl is not installed (needed for the TLS listener)")


def unit_environment(run, unit="sessions-app.service"):
    """Return the Environment= settings of a unit in deploy/, /run moved to ``run``."""
    found = {}
    for line in (DEPLOY / unit).read_text().splitlines():
        if line.startswith("Environment="):
            name, _, value = line.removeprefix("Environment=").partition("=")
            found[name] = value.replace("/run/sessions-app/", f"{run}/")
    return found


def unit_settings(unit):
    """Return ``{(section, key): [values]}`` of a unit file in deploy/."""
    found, section = {}, None
    for line in (DEPLOY / unit).read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault((section, key), []).append(value)
    return found


def substitute(text, old, new):
    assert old in text, f"deploy/nginx.conf no longer has {old!r}"
    return text.replace(old, new)


def nginx_config(base, port, tls_port, cert, key):
    """Write nginx's main config around deploy/nginx.conf; return its path."""
    site = (DEPLOY / "nginx.conf").read_text()
    site = substitute(
        site,
        "listen 80;",
        f"listen 127.0.0.1:{port};\n    listen 127.0.0.1:{tls_port} ssl;\n"
        f"    ssl_certificate {cert};\n    ssl_certificate_key {key};",
    )
    site = substitute(site, "/run/sessions-app/", f"{base}/run/")
    site = substitute(site, "/var/log/nginx/", f"{base}/log/")
    (base / "sessions-app.conf").write_text(site)
    temp = base / "temp"
    # As root, nginx's workers would drop to "nobody" and could not open the
    # socket in a root-only temporary folder.
    user = "user root root;" if os.geteuid() == 0 else ""
    main = f"""
{user}
daemon off;
worker_processes 1;
pid {base}/nginx.pid;
error_log {base}/log/main.error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {base}/sessions-app.conf;
}}
"""
    (base / "nginx.conf").write_text(main)
    return base / "nginx.conf"


@pytest.fixture(scope="module")
def deployed():
    """Gunicorn and nginx as deploy/ configures them; yield the URLs and the log paths."""
    with ExitStack() as cleanup:
        # A short path of its own: unix socket paths are limited to 108 bytes.
        base = Path(tempfile.mkdtemp(prefix="sessions-nginx-"))
        cleanup.callback(shutil.rmtree, base, ignore_errors=True)
        for folder in ("run", "log", "temp"):
            (base / folder).mkdir()
        cert, key = make_certificate(base)
        gunicorn = start_gunicorn(
            base / "run",
            **unit_environment(base / "run"),
            DATABASE_URL=f"sqlite:///{base}/sessions.sqlite3",
            SESSIONS_API_TOKENS=TOKEN,
            WEB_CONCURRENCY="2",
            GUNICORN_THREADS="2",
            # Shorter than the default 15 s, so that a quiet spell past it is short too.
            STREAM_HEARTBEAT_SECONDS=str(HEARTBEAT),
        )
        cleanup.callback(stop, gunicorn)
        port, tls_port = free_port(), free_port()
        config = nginx_config(base, port, tls_port, cert, key)
        error_log = base / "log" / "main.error.log"
        command = [str(NGINX), "-p", str(base), "-c", str(config), "-e", str(error_log)]
        nginx = subprocess.Popen(command)
        cleanup.callback(stop, nginx, signal.SIGQUIT)
        urls = {"http": f"http://127.0.0.1:{port}", "https": f"https://127.0.0.1:{tls_port}"}
        wait_for(f"{urls['http']}/health", gunicorn, base / "run" / "gunicorn.log")
        wait_for(f"{urls['https']}/health", nginx, error_log, verify=str(cert))
        yield {
            **urls,
            "cert": str(cert),
            "app_log": base / "run" / "gunicorn.log",
            "nginx_log": base / "log" / "sessions-app.access.log",
            "socket": base / "run" / "gunicorn.sock",
        }


def make_certificate(base):
    """Make a self-signed certificate for 127.0.0.1; return its and its key's paths."""
    cert, key = base / "cert.pem", base / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def call(deployed, method, path, expect, scheme="http", headers=None, **kwargs):
    """Make a request through nginx and check its status and request id."""
    headers = {**AUTH, **(headers or {})}
    kwargs.setdefault("verify", deployed["cert"])
    response = requests.request(
        method, deployed[scheme] + path, headers=headers, timeout=10, **kwargs
    )
    assert response.status_code == expect, response.text
    echoed = response.headers["X-Request-ID"]
    assert SANE_ID(echoed)
    if SANE_ID(headers.get("X-Request-ID", "")):
        assert echoed == headers["X-Request-ID"]
    return response


def test_every_endpoint_works_through_nginx(deployed):
    created = call(deployed, "POST", "/api/sessions", 201, json={"agent_id": "CLAUDE_CODE"})
    location = created.headers["Location"]
    assert location == f"/api/sessions/{created.json()['id']}"
    call(deployed, "GET", location, 200)
    call(deployed, "PATCH", location, 200, json={"status": "active"})
    call(deployed, "POST", f"{location}/message", 201, json={"content": "one"})
    call(deployed, "POST", f"{location}/messages", 201, json={"content": "two", "role": "system"})
    messages = call(deployed, "GET", f"{location}/messages", 200).json()["messages"]
    assert [m["content"] for m in messages] == ["one", "two"]
    listed = call(deployed, "GET", "/api/sessions?status=active", 200).json()["sessions"]
    assert [s["id"] for s in listed] == [created.json()["id"]]
    call(deployed, "DELETE", location, 204)
    call(deployed, "GET", location, 404)
    assert call(deployed, "GET", "/health", 200).json() == {"status": "ok"}
    # The API's description is open: no token sent.
    assert requests.get(deployed["http"] + "/api/openapi.json", timeout=10).status_code == 200
    assert requests.get(deployed["http"] + "/api/docs/", timeout=10).status_code == 200
    metrics = call(deployed, "GET", "/metrics", 200).text
    assert 'sessions_messages_stored_total{role="system"} 1.0' in metrics


def test_the_service_sees_the_forwarded_address_and_scheme(deployed):
    # A client cannot choose its address: nginx appends the one it saw, and
    # the service trusts exactly that one hop.
    spoofed = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    call(deployed, "GET", "/health", 200, headers={"X-Request-ID": "e2e-http", **spoofed})
    call(deployed, "GET", "/health", 200, scheme="https", headers={"X-Request-ID": "e2e-tls"})
    plain = request_line(deployed["app_log"], "e2e-http")
    tls = request_line(deployed["app_log"], "e2e-tls")
    assert (plain["client"], plain["scheme"]) == ("127.0.0.1", "http")
    assert (tls["client"], tls["scheme"]) == ("127.0.0.1", "https")


def test_the_request_id_follows_the_request_through_both_logs(deployed):
    call(deployed, "POST", "/api/sessions", 201, headers={"X-Request-ID": "e2e-trace-1"},
         json={"agent_id": "CLAUDE_CODE"})  # fmt: skip
    line = request_line(deployed["app_log"], "e2e-trace-1")
    assert (line["method"], line["route"], line["status"]) == ("POST", "/api/sessions", 201)
    assert line["session_id"].startswith("session-")
    entry = nginx_log_entry(deployed["nginx_log"], "e2e-trace-1")
    assert (entry["method"], entry["uri"], entry["status"]) == ("POST", "/api/sessions", 201)


def nginx_log_entry(path, request_id):
    """Return nginx's access-log entry for ``request_id``, waiting for nginx to write it."""
    # nginx writes the line after it has sent the response.
    deadline = time.monotonic() + 10
    while True:
        for text in path.read_text().splitlines():
            entry = json.loads(text)
            if entry["request_id"] == request_id:
                return entry
        assert time.monotonic() < deadline, f"no access-log line for {request_id}"
        time.sleep(0.05)


def test_an_insane_request_id_is_replaced(deployed):
    response = call(
        deployed, "GET", "/health", 200, headers={"X-Request-ID": "no spaces; or <tags>"}
    )
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_body_is_a_413_problem_from_nginx(deployed, chunked):
    body = b'{"agent_id": "' + b"x" * MAX_BODY + b'"}'
    data = iter([body[i : i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
    headers = {"X-Request-ID": "e2e-too-large", "Content-Type": "application/json"}
    response = call(deployed, "POST", "/api/sessions", 413, data=data, headers=headers)
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json() == {
        "type": "about:blank",
        "title": "Request Entity Too Large",
        "status": 413,
        "detail": "The data value transmitted exceeds the capacity limit.",
        "instance": "e2e-too-large",
    }


def test_a_body_at_the_limit_reaches_the_service(deployed):
    padding = MAX_BODY - len(b'{"agent_id": "", "data": {"p": ""}}') - len("CLAUDE_CODE")
    body = json.dumps({"agent_id": "CLAUDE_CODE", "data": {"p": "x" * padding}})
    assert len(body) == MAX_BODY
    call(
        deployed,
        "POST",
        "/api/sessions",
        201,
        data=body,
        headers={"Content-Type": "application/json"},
    )


def test_a_missing_token_is_a_401_problem_through_nginx(deployed):
    response = requests.get(deployed["http"] + "/api/sessions", timeout=10)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.headers["Content-Type"] == "application/problem+json"
    assert TOKEN not in deployed["app_log"].read_text()


def test_nginx_refuses_a_malformed_path_with_a_400_problem(deployed):
    # requests would quote the NUL: send the bytes as a client could.
    host, port = deployed["http"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(b"GET /api/sessions/%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := client.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"Content-Type: application/problem+json" in head
    problem = json.loads(body)
    assert SANE_ID(problem.pop("instance"))
    assert problem == {
        "type": "about:blank",
        "title": "Bad Request",
        "status": 400,
        "detail": "The request is malformed and was refused before it reached the service.",
    }


def test_a_long_poll_through_nginx_is_woken_by_a_write(deployed):
    start = call(deployed, "GET", "/api/changes?cursor=latest", 200).json()["next_cursor"]
    answer = {}

    def wait():
        answer["page"] = call(
            deployed, "GET", f"/api/changes?cursor={start}&wait=30&agent_id=nginx-poll", 200
        ).json()

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(1)
    made = call(deployed, "POST", "/api/sessions", 201, json={"agent_id": "nginx-poll"}).json()
    waiter.join()
    assert [c["session_id"] for c in answer["page"]["changes"]] == [made["id"]]


def test_a_stream_through_nginx_survives_a_quiet_spell(deployed):
    """A quiet spell past the heartbeat: the heartbeats come through nginx, and the stream
    stays open and carries the next change."""
    with requests.get(
        deployed["http"] + "/api/changes",
        headers={**AUTH, "Accept": "text/event-stream"},
        stream=True,
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        lines = response.iter_lines(chunk_size=1, decode_unicode=True)
        assert next(lines).startswith(":"), "the stream opens at once, through nginx"
        time.sleep(HEARTBEAT + 1.5)
        made = call(deployed, "POST", "/api/sessions", 201, json={"agent_id": "quiet"}).json()
        seen = []
        for line in lines:
            seen.append(line)
            if line.startswith("data:"):
                break
    assert any(line.startswith(": keep-alive") for line in seen)
    assert made["id"] in seen[-1]


def test_the_socket_is_closed_to_other_users(deployed):
    assert deployed["socket"].stat().st_mode & 0o777 == 0o770


# -- retention: the prune unit and its timer ----------------------------------------

PRUNE_UNIT = "sessions-app-prune.service"
PRUNE_TIMER = "sessions-app-prune.timer"


def test_the_timer_starts_prune_every_five_minutes_without_overlap():
    timer = unit_settings(PRUNE_TIMER)
    assert timer[("Timer", "Unit")] == [PRUNE_UNIT]
    assert timer[("Timer", "OnBootSec")] == ["5min"]
    # Counted from the end of the previous run: a long run delays the next.
    assert timer[("Timer", "OnUnitInactiveSec")] == ["5min"]
    assert timer[("Install", "WantedBy")] == ["timers.target"]
    assert unit_settings(PRUNE_UNIT)[("Service", "Type")] == ["oneshot"]


def test_the_prune_unit_runs_as_the_service_with_its_settings():
    app, prune = unit_settings("sessions-app.service"), unit_settings(PRUNE_UNIT)
    for key in ("User", "Group", "WorkingDirectory", "EnvironmentFile"):
        assert prune[("Service", key)] == app[("Service", key)], key
    # Its numbers go where the workers' are, so the service's /metrics has them.
    assert (
        unit_environment("/run", PRUNE_UNIT)["PROMETHEUS_MULTIPROC_DIR"]
        == unit_environment("/run")["PROMETHEUS_MULTIPROC_DIR"]
    )
    # It must not own /run/sessions-app: systemd would remove the folder (and
    # the service's socket) when a run ends.
    assert ("Service", "RuntimeDirectory") not in prune


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_accepts_the_units(tmp_path):
    for unit in ("sessions-app.service", PRUNE_UNIT, PRUNE_TIMER):
        shutil.copy(DEPLOY / unit, tmp_path / unit)
    units = [str(tmp_path / u) for u in ("sessions-app.service", PRUNE_UNIT, PRUNE_TIMER)]
    checked = subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60
    )
    # Only the programs under /srv/sessions-app are missing on a test machine.
    complaints = [
        line
        for line in (checked.stdout + checked.stderr).splitlines()
        if line.strip() and not re.search(r"Command /srv/sessions-app/\S+ is not executable", line)
    ]
    assert complaints == []


def test_the_prune_unit_deletes_expired_sessions_of_the_deployed_service(deployed):
    base = deployed["app_log"].parent.parent
    doomed = call(deployed, "POST", "/api/sessions", 201, json={"agent_id": "PRUNED"}).json()
    kept = call(deployed, "POST", "/api/sessions", 201, json={"agent_id": "PRUNED"}).json()
    for session in (doomed, kept):
        call(deployed, "POST", f"/api/sessions/{session['id']}/message", 201, json={"content": "x"})
        call(deployed, "PATCH", f"/api/sessions/{session['id']}", 200, json={"status": "failed"})
    with sqlite3.connect(base / "sessions.sqlite3", timeout=10) as conn:
        conn.execute(
            "UPDATE sessions SET last_active = last_active - 2 * 86400000000 WHERE id = ?",
            (doomed["id"],),
        )
    conn.close()

    settings = unit_settings(PRUNE_UNIT)
    (command,) = settings[("Service", "ExecStart")]
    program, *args = command.split()
    assert program == "/srv/sessions-app/.venv/bin/flask"
    ran = subprocess.run(
        [str(Path(sys.executable).parent / "flask"), *args],
        cwd=ROOT,
        env={
            **os.environ,
            **unit_environment(base / "run", PRUNE_UNIT),
            "DATABASE_URL": f"sqlite:///{base}/sessions.sqlite3",
            "SESSION_RETENTION_SECONDS": "86400",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    *log, summary = ran.stdout.splitlines()
    assert summary.startswith("Deleted 1 sessions, 1 messages, 0 keys, 0 changes in ")
    assert json.loads(log[-1])["message"] == "Pruned 1 sessions, 1 messages, 0 keys, 0 changes"

    call(deployed, "GET", f"/api/sessions/{doomed['id']}", 404)
    call(deployed, "GET", f"/api/sessions/{kept['id']}", 200)
    listed = call(deployed, "GET", "/api/sessions?agent_id=PRUNED", 200).json()["sessions"]
    assert [s["id"] for s in listed] == [kept["id"]]
    metrics = call(deployed, "GET", "/metrics", 200).text
    assert 'sessions_pruned_total{what="sessions"} 1.0' in metrics
    assert 'sessions_prune_runs_total{outcome="ok"} 1.0' in metrics


def test_keyed_posts_pass_through_nginx_and_replay(deployed):
    """A POST with an Idempotency-Key takes nginx's retry-safe route, body and headers intact."""
    url = deployed["http"]
    headers = {**AUTH, "Idempotency-Key": "through-nginx"}
    body = {"agent_id": "nginx", "data": {"n": 1}}
    first = requests.post(f"{url}/api/sessions", json=body, headers=headers, timeout=10)
    again = requests.post(f"{url}/api/sessions", json=body, headers=headers, timeout=10)
    assert first.status_code == again.status_code == 201, first.text
    assert first.json()["data"] == {"n": 1}
    assert again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    message_url = f"{url}{first.headers['Location']}/message"
    sent = requests.post(
        message_url, json={"content": "x"}, headers=headers | {"Idempotency-Key": "m"}, timeout=10
    )
    assert sent.status_code == 201, sent.text
    unkeyed = requests.post(f"{url}/api/sessions", json=body, headers=AUTH, timeout=10)
    assert unkeyed.status_code == 201 and unkeyed.json()["id"] != first.json()["id"]
    # The internal route is not a path of the service's own.
    assert (
        requests.post(f"{url}/_keyed/api/sessions", json=body, headers=AUTH, timeout=10).status_code
        == 404
    )
