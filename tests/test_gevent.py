"""The service under Gunicorn's gevent worker, on PostgreSQL: writers in
greenlets of one process each get their own connection and transaction.

A worker monkey-patches when it starts; had the master imported peewee
before that (gunicorn.conf.py used to), its connection state would be one
per thread, shared by every greenlet: concurrent requests would run on one
connection and one transaction stack.
"""

import os
import tempfile
import threading
from pathlib import Path

import psycopg
import pytest
import requests
from databases import new_database
from servers import require, serving

pytestmark = pytest.mark.server

try:
    import gevent  # noqa: F401
except ImportError:
    gevent = None

require(gevent, "gevent is not installed (pip install -e '.[gevent]')")
require(os.environ.get("TEST_DATABASE_URL"), "TEST_DATABASE_URL is not set")

WRITERS = 8
MESSAGES = 15  # per writer


@pytest.fixture
def served(tmp_path):
    with (
        new_database("postgresql", tmp_path) as url,
        tempfile.TemporaryDirectory(prefix="sessions-gevent-") as folder,
        serving(
            Path(folder),
            DATABASE_URL=url,
            GUNICORN_CMD_ARGS="--worker-class gevent",
            WEB_CONCURRENCY="1",
            DATABASE_POOL_SIZE=str(WRITERS),
        ) as (base, _process),
    ):
        yield base, url, Path(folder) / "gunicorn.log"


def test_concurrent_writers_in_one_gevent_worker_count_exactly(served):
    base, url, log = served
    session = requests.post(f"{base}/api/sessions", json={"agent_id": "g"}, timeout=10).json()
    path = f"{base}/api/sessions/{session['id']}"
    statuses, lock, start = [], threading.Lock(), threading.Barrier(WRITERS)

    def write():
        http = requests.Session()
        start.wait()
        for _ in range(MESSAGES):
            status = http.post(f"{path}/message", json={"content": "x"}, timeout=30).status_code
            with lock:
                statuses.append(status)

    writers = [threading.Thread(target=write) for _ in range(WRITERS)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()

    assert "Using worker: gevent" in log.read_text()
    assert statuses == [201] * (WRITERS * MESSAGES)
    assert requests.get(path, timeout=10).json()["message_count"] == WRITERS * MESSAGES
    page = requests.get(f"{path}/messages", params={"limit": 1000}, timeout=10).json()
    assert len({m["message_id"] for m in page["messages"]}) == WRITERS * MESSAGES
    # The pool opens a connection only when none is free: more than one
    # means greenlets held connections at the same time, each its own.  The
    # change feed's watcher and publisher have a connection each, outside it.
    with psycopg.connect(url) as admin:
        (connections,) = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchone()
    assert 1 < connections <= WRITERS + 2
