"""A real server whose PostgreSQL is cut off: only the answers that need data fail.

Gunicorn reaches the test database through a TCP proxy that the test cuts,
as a network outage would.  Monitoring (``/metrics``), the API description
and answers that need no data keep working; ``/health`` and the endpoints
that read or write sessions answer 503 with Retry-After.
"""

import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from servers import TcpProxy, require, serving

pytestmark = pytest.mark.server

URL = os.environ.get("TEST_DATABASE_URL", "")
require(URL.startswith("postgres"), "TEST_DATABASE_URL does not name a PostgreSQL database")

SID = "session-0000000000000000000000000000"
TIMEOUT = 15  # a request needing longer hung (the connect timeout is 3 s)


@pytest.fixture
def proxy():
    parts = urlsplit(URL)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    user, at, _ = parts.netloc.rpartition("@")
    proxy.url = urlunsplit(parts._replace(netloc=f"{user}{at}127.0.0.1:{proxy.port}"))
    yield proxy
    proxy.cut()


@pytest.fixture
def base(proxy):
    with (
        tempfile.TemporaryDirectory(prefix="sessions-cut-off-") as folder,
        serving(Path(folder), DATABASE_URL=proxy.url, WEB_CONCURRENCY="1") as (base, _),
    ):
        yield base


def get(base, method, path, **kwargs):
    return requests.request(method, base + path, timeout=TIMEOUT, **kwargs)


USUAL = [
    ("GET", "/metrics", {}, 200),
    ("GET", "/api/openapi.json", {}, 200),
    ("GET", "/api/docs/", {}, 200),
    ("GET", "/nope", {}, 404),
    ("PUT", "/api/sessions", {}, 405),
    ("POST", "/api/sessions", {"data": "{}", "headers": {"Content-Type": "text/plain"}}, 415),
]
NEED_DATA = [
    ("GET", "/health", {}),
    ("GET", "/api/sessions", {}),
    ("POST", "/api/sessions", {"json": {"agent_id": "a"}}),
    ("GET", f"/api/sessions/{SID}", {}),
    ("POST", f"/api/sessions/{SID}/message", {"json": {"content": "hi"}}),
]


def test_with_the_database_cut_off_only_answers_that_need_data_fail(proxy, base):
    created = get(base, "POST", "/api/sessions", json={"agent_id": "a"})
    assert created.status_code == 201
    proxy.cut()
    for method, path, kwargs, status in USUAL:
        response = get(base, method, path, **kwargs)
        assert response.status_code == status, (method, path, response.text)
    assert "sessions_http_requests_total" in get(base, "GET", "/metrics").text
    for method, path, kwargs in NEED_DATA:
        response = get(base, method, path, **kwargs)
        assert response.status_code == 503, (method, path, response.text)
        assert response.headers["Content-Type"] == "application/problem+json"
        assert response.headers["Retry-After"] == "2"
