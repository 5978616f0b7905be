"""/api/docs in a real browser: headless Chromium lists every operation, offline."""

import html
import re
import shutil
import subprocess
import threading

import pytest
from servers import require
from werkzeug.serving import make_server

from sessions_app import openapi

CHROMIUM = shutil.which("chromium")

pytestmark = pytest.mark.server

require(CHROMIUM, "no 'chromium' on PATH: apt-get install -y chromium (.ci/run does)")


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


def test_docs_render_every_operation(app, base_url, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", f"{base_url}/api/docs/").stdout
    operations = openapi.operations(app)
    # Swagger UI builds these blocks from the document: the page as served
    # holds none of them.
    assert dom.count('<div class="opblock opblock-') == len(operations), dom[-2000:]
    for (method, path), operation in operations.items():
        block = re.search(
            rf'<div class="opblock opblock-{method.lower()}[^"]*" '
            rf'id="operations-{operation.tag}-{operation.operation_id}">.*?'
            rf'<span class="opblock-summary-method">{method}</span>.*?'
            rf'data-path="{re.escape(path)}".*?'
            rf'<div class="opblock-summary-description">'
            rf"{re.escape(html.escape(operation.summary, quote=False))}</div>",
            dom,
        )
        assert block, (method, path, operation.summary)
