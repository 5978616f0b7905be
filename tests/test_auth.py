"""Bearer tokens on /api: read-write, read-only, constant-time, open paths, start warning."""

import tempfile
import time
from pathlib import Path

import pytest
from servers import log_lines, start_gunicorn, stop

from sessions_app import auth, db, exposure

READ_WRITE = ("rw-token-1", "rw-token-2")
READ_ONLY = "ro-token-1"
MISSING = "This endpoint needs an 'Authorization: Bearer <token>' header."
INVALID = "The bearer token is not valid."


@pytest.fixture
def guarded(tmp_path, make_app):
    """A client of an app that requires a token (spaces and empty items in the lists)."""
    app = make_app(
        f"sqlite:///{tmp_path}/s.sqlite3",
        SESSIONS_API_TOKENS=f" {READ_WRITE[0]} ,,{READ_WRITE[1]}",
        SESSIONS_API_READONLY_TOKENS=READ_ONLY,
    )
    yield app.test_client()
    db.database.close_all()


def assert_problem(response, status, detail):
    """Check ``response`` is the problem document for ``status`` and ``detail``."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    title = {401: "Unauthorized", 403: "Forbidden"}[status]
    assert response.get_json() == {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": response.headers["X-Request-ID"],
    }


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("token", READ_WRITE)
def test_a_read_write_token_may_do_everything(guarded, token):
    created = guarded.post("/api/sessions", json={"agent_id": "a"}, headers=bearer(token))
    assert created.status_code == 201
    path = created.headers["Location"]
    assert guarded.get(path, headers=bearer(token)).status_code == 200
    assert guarded.patch(path, json={"status": "active"}, headers=bearer(token)).status_code == 200
    assert guarded.delete(path, headers=bearer(token)).status_code == 204


def test_the_scheme_is_case_insensitive(guarded):
    response = guarded.get("/api/sessions", headers={"Authorization": f"bearer {READ_WRITE[0]}"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", f"Basic {READ_WRITE[0]}", READ_WRITE[0]],
    ids=["absent", "empty", "no-token", "blank-token", "basic", "no-scheme"],
)
def test_no_bearer_token_is_a_401(guarded, header):
    headers = {} if header is None else {"Authorization": header}
    response = guarded.get("/api/sessions", headers=headers)
    assert_problem(response, 401, MISSING)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="sessions-api"'


@pytest.mark.parametrize(
    "token",
    ["wrong", READ_WRITE[0] + "x", READ_WRITE[0][:-1], f"{READ_WRITE[0]},{READ_WRITE[1]}", "é"],
    ids=["wrong", "longer", "shorter", "both-joined", "non-ascii"],
)
def test_a_wrong_token_is_a_401_naming_the_error(guarded, token):
    response = guarded.get("/api/sessions", headers=bearer(token))
    assert_problem(response, 401, INVALID)
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="sessions-api", error="invalid_token"'
    )


def test_a_read_only_token_may_read(guarded):
    created = guarded.post("/api/sessions", json={"agent_id": "a"}, headers=bearer(READ_WRITE[0]))
    path = created.headers["Location"]
    assert guarded.get("/api/sessions", headers=bearer(READ_ONLY)).status_code == 200
    assert guarded.get(path, headers=bearer(READ_ONLY)).json == created.json
    assert guarded.get(f"{path}/messages", headers=bearer(READ_ONLY)).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/api/sessions", {"agent_id": "a"}),
        ("patch", "{session}", {"status": "active"}),
        ("delete", "{session}", None),
        ("post", "{session}/message", {"content": "hi"}),
    ],
)
def test_a_read_only_token_may_not_write(guarded, method, path, body):
    created = guarded.post("/api/sessions", json={"agent_id": "a"}, headers=bearer(READ_WRITE[0]))
    session = created.headers["Location"]
    response = getattr(guarded, method)(
        path.format(session=session), json=body, headers=bearer(READ_ONLY)
    )
    assert_problem(response, 403, auth.ReadOnlyToken.description)
    after = guarded.get(session, headers=bearer(READ_WRITE[0]))
    assert after.json == created.json
    assert len(guarded.get("/api/sessions", headers=bearer(READ_ONLY)).json["sessions"]) == 1


def test_an_unknown_api_path_asks_for_a_token_before_saying_404(guarded):
    assert guarded.get("/api/nothing-here").status_code == 401
    assert guarded.get("/api/nothing-here", headers=bearer(READ_ONLY)).status_code == 404


@pytest.mark.parametrize("path", ["/health", "/metrics"])
def test_operations_endpoints_stay_open(guarded, path):
    assert guarded.get(path).status_code == 200


@pytest.mark.parametrize("path", ["/api/openapi.json", "/api/docs/", "/api/docs/swagger-ui.css"])
def test_the_api_description_stays_open(guarded, path):
    with guarded.get(path) as response:  # a file is streamed: close it
        assert response.status_code == 200


@pytest.mark.parametrize("path", ["/api/openapi.jsonx", "/api/docsx", "/api", "/api/"])
def test_only_the_open_paths_themselves_are_open(guarded, path):
    assert guarded.get(path).status_code == 401


def test_without_tokens_the_api_is_open(client):
    assert client.get("/api/sessions").status_code == 200


@pytest.mark.parametrize(
    "addresses",
    [[("127.0.0.1", 8000)], [("::1", 8000)], [("localhost", 8000)], [("127.0.0.2", 1)]],
)
def test_no_warning_on_loopback(addresses):
    assert exposure.warning(settings(), addresses) is None


@pytest.mark.parametrize(
    ("addresses", "named"),
    [
        ([("0.0.0.0", 8000)], "0.0.0.0:8000"),
        ([("127.0.0.1", 8000), ("10.1.2.3", 80)], "10.1.2.3:80"),
        ([("::", 8000)], ":::8000"),
        (["/run/sessions-app/gunicorn.sock"], "unix:/run/sessions-app/gunicorn.sock"),
        ([("example.internal", 8000)], "example.internal:8000"),
    ],
)
def test_a_warning_when_open_beyond_loopback_without_tokens(addresses, named):
    warning = exposure.warning(settings(), addresses)
    assert "SESSIONS_API_TOKENS is not set" in warning and named in warning


@pytest.mark.parametrize("name", ["SESSIONS_API_TOKENS", "SESSIONS_API_READONLY_TOKENS"])
def test_no_warning_when_tokens_are_set(name):
    assert exposure.warning(settings(**{name: "t"}), [("0.0.0.0", 8000)]) is None


def settings(**values):
    return {"SESSIONS_API_TOKENS": "", "SESSIONS_API_READONLY_TOKENS": "", **values}


@pytest.mark.server
@pytest.mark.parametrize("tokens", ["", "t0ken"], ids=["no-tokens", "tokens"])
def test_gunicorn_warns_at_start_when_open_without_tokens(tokens):
    with tempfile.TemporaryDirectory(prefix="sessions-warn-") as folder:
        run = Path(folder)
        gunicorn = start_gunicorn(
            run,
            BIND=f"unix:{run}/gunicorn.sock",
            DATABASE_URL=f"sqlite:///{run}/sessions.sqlite3",
            SESSIONS_API_TOKENS=tokens,
            WEB_CONCURRENCY="1",
        )
        try:
            log = run / "gunicorn.log"
            deadline = time.monotonic() + 30
            # when_ready runs before the first worker boots: once one has
            # booted, the warning, if any, is in the log.
            while "Booting worker" not in log.read_text() and time.monotonic() < deadline:
                assert gunicorn.poll() is None, log.read_text()
                time.sleep(0.1)
            assert "Booting worker" in log.read_text(), "no worker started in 30 s"
        finally:
            stop(gunicorn)
        warnings = [line for line in log_lines(log) if line["level"] == "WARNING"]
    if tokens:
        assert warnings == []
    else:
        (warning,) = warnings
        assert warning["message"].startswith("SESSIONS_API_TOKENS is not set")
        assert f"unix:{run}/gunicorn.sock" in warning["message"]
