"""/api/docs in a real browser: headless Chromium lists every operation, offline."""

import shutil
import subprocess
import threading

import pytest
from werkzeug.serving import make_server

from sessions_app import openapi

CHROMIUM = shutil.which("chromium")

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no 'chromium' on PATH: apt-get install -y chromium (.ci/run does)",
    ),
]


@pytest.fixture(params=["sqlite"])
def database_url(request, tmp_path):
    """One database is enough: the page does not depend on it."""
    return f"sqlite:///{tmp_path}/sessions.sqlite3"


@pytest.fixture
def base_url(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join()


def chromium(tmp_path, *args):
    """Run headless Chromium that may resolve no host but the loopback address."""
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=15000",
        "--window-size=1280,2000",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def test_docs_list_every_operation(base_url, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", f"{base_url}/api/docs/").stdout
    assert "opblock-summary" in dom, dom[-2000:]
    for (method, path), operation in openapi.OPERATIONS.items():
        assert operation.summary in dom, (method, path)
    assert dom.count('class="opblock-summary-path"') >= len(openapi.OPERATIONS)


def test_docs_screenshot(base_url, tmp_path):
    shot = tmp_path / "docs.png"
    chromium(tmp_path, f"--screenshot={shot}", f"{base_url}/api/docs/")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
