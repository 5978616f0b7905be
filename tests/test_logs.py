"""Logs: one line per request with its facts, every line with the request id, no secrets."""

import io
import json
import logging
import logging.config
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from sessions_app import config, create_app, db, migrations
from sessions_app.logs import JsonFormatter, TextFormatter, dict_config

SECRET_TOKEN = "tok-do-not-log-0123456789"
SECRET_CONTENT = "body text that must not be logged"


@pytest.fixture
def logged(caplog):
    """Capture the service's records at INFO: ``logged.records``."""
    with caplog.at_level(logging.INFO, logger="sessions_app"):
        yield caplog


def request_lines(records):
    return [r.fields for r in records if r.name == "sessions_app.requests"]


def test_one_line_per_request_with_its_facts(client, api, logged):
    session_id = api.create()["id"]
    logged.clear()
    client.get(f"/api/sessions/{session_id}", headers={"X-Request-ID": "rid-get-1"})
    (record,) = [r for r in logged.records if r.name == "sessions_app.requests"]
    assert record.request_id == "rid-get-1"
    assert isinstance(record.fields.pop("duration_ms"), float)
    assert record.fields == {
        "method": "GET",
        "route": "/api/sessions/<session_id:session_id>",
        "session_id": session_id,
        "status": 200,
        "client": "127.0.0.1",
        "scheme": "http",
        "token": None,
    }


def test_a_created_session_is_named_in_its_line(api, logged):
    session_id = api.create()["id"]
    (line,) = request_lines(logged.records)
    assert (line["route"], line["status"], line["session_id"]) == ("/api/sessions", 201, session_id)


def test_an_error_gets_its_line_too(client, logged):
    client.get("/no/such/path")
    client.post("/api/sessions", data="[", content_type="application/json")
    assert [
        (line["route"], line["status"], line["session_id"])
        for line in request_lines(logged.records)
    ] == [
        (None, 404, None),
        ("/api/sessions", 400, None),
    ]


def test_a_write_logs_one_line_at_info_the_request_s(client, api, logged):
    made = api.create()
    api.patch(made["id"], status="paused")
    api.send(made["id"])
    api.delete(made["id"])
    lines = [(r.name, getattr(r, "fields", {}).get("session_id")) for r in logged.records]
    assert lines == [("sessions_app.requests", made["id"])] * 4


def test_every_line_of_a_request_carries_its_id(client, caplog):
    with caplog.at_level(logging.DEBUG, logger="sessions_app"):
        client.post("/api/sessions", json={"agent_id": "a"}, headers={"X-Request-ID": "rid-create"})
    names = {r.name for r in caplog.records if r.request_id == "rid-create"}
    # At DEBUG the model's own line ("Created session ...") and the request line.
    assert names == {"sessions_app.models", "sessions_app.requests"}


def test_a_line_outside_a_request_has_no_id(app, logged):
    logging.getLogger("sessions_app.test").warning("outside")
    assert logged.records[-1].request_id is None


@pytest.fixture(params=config.LOG_FORMATS)
def production_logging(request):
    """Log as Gunicorn does (dict_config, at DEBUG); yield a reader of what was written."""
    root, peewee = logging.getLogger(), logging.getLogger("peewee")
    saved = root.level, root.handlers[:], peewee.level
    logging.config.dictConfig(dict_config("DEBUG", request.param))
    written = io.StringIO()
    root.handlers[0].setStream(written)
    try:
        yield written.getvalue
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        peewee.setLevel(saved[2])


def test_no_line_holds_a_token_or_a_body(tmp_path, production_logging):
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": f"sqlite:///{tmp_path}/s.sqlite3",
            "SESSIONS_API_TOKENS": SECRET_TOKEN,
        }
    )
    migrations.upgrade()
    client = app.test_client()
    auth = {"Authorization": f"Bearer {SECRET_TOKEN}"}
    try:
        created = client.post("/api/sessions", json={"agent_id": "a", "prompt": SECRET_CONTENT},
                              headers=auth)  # fmt: skip
        path = created.headers["Location"]
        client.post(f"{path}/message", json={"content": SECRET_CONTENT}, headers=auth)
        client.get(f"{path}/messages", headers=auth)
        client.get("/api/sessions", headers={"Authorization": f"Bearer {SECRET_TOKEN}x"})
    finally:
        db.database.close_all()
    text = production_logging()
    assert text.count("sessions_app.requests") == 4
    assert SECRET_TOKEN not in text and SECRET_CONTENT not in text


def test_json_lines(client, logged):
    client.get("/health", headers={"X-Request-ID": "rid-json"})
    line = json.loads(JsonFormatter().format(logged.records[-1]))
    assert line["time"].endswith("Z")
    assert line["level"] == "INFO"
    assert line["logger"] == "sessions_app.requests"
    assert line["message"] == "GET /health 200"
    assert line["request_id"] == "rid-json"
    assert (line["route"], line["status"], line["client"]) == ("/health", 200, "127.0.0.1")


def test_text_lines(client, logged):
    client.get("/health", headers={"X-Request-ID": "rid-text"})
    line = TextFormatter().format(logged.records[-1])
    assert "INFO sessions_app.requests [rid-text] GET /health 200 method=GET route=/health" in line


def test_an_exception_is_one_json_line(app):
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), None)
        record.exc_info = sys.exc_info()
    text = JsonFormatter().format(record)
    assert "\n" not in text and "RuntimeError: boom" in json.loads(text)["exception"]


def test_an_unknown_log_format_is_refused():
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        config.load({"LOG_FORMAT": "xml"})


def test_the_dev_servers_request_line_is_dropped(production_logging):
    # What Werkzeug's dev server (make dev) logs per request, colour codes and all.
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.info(
        '127.0.0.1 - - [30/Nov/2026 05:54:24] "%s" %s %s',
        "\x1b[33mGET /x HTTP/1.1\x1b[0m",
        "404",
        "-",
    )
    werkzeug.info(" * Running on http://127.0.0.1:8000")
    text = production_logging()
    assert "GET /x" not in text and "Running on" in text


def test_text_lines_leave_out_empty_fields(client, logged):
    client.get("/health")
    line = TextFormatter().format(logged.records[-1])
    assert "session_id" not in line and "route=/health status=200" in line


def test_make_dev_logs_text_lines():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    dev = makefile.split("\ndev:", 1)[1].split("\n\n", 1)[0]
    assert dev.count("LOG_FORMAT=$${LOG_FORMAT:-text}") == 2


@pytest.mark.server
def test_the_dev_server_writes_one_readable_line_per_request(tmp_path):
    from servers import free_port, stop, wait_for

    flask = Path(sys.executable).parent / "flask"
    port = free_port()
    env = {
        **os.environ,
        "LOG_FORMAT": "text",
        "DATABASE_URL": f"sqlite:///{tmp_path}/dev.sqlite3",
    }
    subprocess.run(
        [flask, "--app", "sessions_app", "db", "upgrade"], env=env, check=True, capture_output=True
    )
    log_path = tmp_path / "dev.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [flask, "--app", "sessions_app", "run", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(f"http://127.0.0.1:{port}/health", process, log_path)
        requests.get(f"http://127.0.0.1:{port}/api/sessions/nothing-here", timeout=5)
    finally:
        stop(process)
    lines = log_path.read_text().splitlines()
    requests_logged = [line for line in lines if "sessions_app.requests" in line]
    assert [line.split("] ", 1)[1].split(" method=")[0] for line in requests_logged] == [
        "GET /health 200",
        "GET (no route) 404",
    ]
    # No second line per request from Werkzeug, and no colour codes in the request lines.
    assert not [line for line in lines if "HTTP/1.1" in line]
    assert not [line for line in requests_logged if "\x1b[" in line]


def test_text_lines_escape_what_clients_send(client, caplog):
    forged = "a\n2026-01-01T00:00:00.000Z ERROR sessions_app.auth forged line\r\x1b[31m\u2028"
    with caplog.at_level(logging.DEBUG, logger="sessions_app"):  # the model's line is DEBUG
        client.post("/api/sessions", json={"agent_id": forged}, headers={"X-Request-ID": "rid-esc"})
    records = [r for r in caplog.records if r.request_id == "rid-esc"]
    created = next(r for r in records if r.name == "sessions_app.models")
    created.fields = {"agent": forged}
    text = TextFormatter().format(created)
    assert text.splitlines() == [text]
    assert "\x1b" not in text and "\u2028" not in text
    assert "for agent a\\n2026-01-01T00:00:00.000Z ERROR sessions_app.auth forged line\\r" in text
    assert text.endswith("agent=a\\n2026-01-01T00:00:00.000Z ERROR sessions_app.auth forged "
                         "line\\r\\x1b[31m\\u2028")  # fmt: skip


def test_a_text_lines_exception_cannot_start_a_line(app):
    try:
        raise RuntimeError("boom\n2026-01-01T00:00:00.000Z ERROR x forged")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), None)
        record.exc_info = sys.exc_info()
    first, *rest = TextFormatter().format(record).splitlines()
    assert first.endswith("ERROR x failed")
    assert rest and all(line.startswith("  | ") for line in rest)
