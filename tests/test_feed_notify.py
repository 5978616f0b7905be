"""A publishing pass names its newest seq in its NOTIFY: an idle watcher reads nothing.

PostgreSQL only.  Each worker's watcher is woken by every pass of the fleet;
with no one in its worker following the feed it moves its horizon to the
seq the payload names, with no query.  A payload that names no seq (earlier
releases sent an empty one) has it read where the feed stands, as before.
"""

import os
import threading
import time

import psycopg
import pytest
from servers import require

from sessions_app import db, feed
from sessions_app.feed import hub as waiting
from sessions_app.feed import reading
from sessions_app.timefmt import now_us

URL = os.environ.get("TEST_DATABASE_URL", "")
require(URL.startswith("postgres"), "TEST_DATABASE_URL does not name a PostgreSQL database")


def until(condition, seconds=10):
    """Wait until ``condition()`` holds; fail if it never does."""
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


@pytest.fixture
def watched(make_app, monkeypatch):
    """``(app, hub, looks)``: the hub's watcher started; ``looks`` lists each newest-seq query."""
    # No safety look while the test runs: only notifications wake the watcher.
    monkeypatch.setattr(waiting, "SAFETY_INTERVAL", 60)
    app = make_app(URL)
    with app.app_context():
        hub = feed.current_hub()
    looks = []

    def newest(reader):
        found = reading.newest(reader)
        looks.append(found)
        return found

    hub.newest = newest
    hub.start()
    # Where the feed stands at the start, then once listening: changes between the two.
    until(lambda: len(looks) == 2)
    looks.clear()
    yield app, hub, looks
    db.database.close_all()


def stands(app):
    with app.app_context(), db.connected():
        return feed.marks()[0]


def test_an_idle_watcher_follows_the_passes_without_a_query(watched):
    app, hub, looks = watched
    client = app.test_client()
    for n in range(5):
        assert client.post("/api/sessions", json={"agent_id": f"a{n}"}).status_code == 201
    newest = stands(app)
    until(lambda: hub.horizon == newest)
    assert looks == []
    assert not hub.following


def publish_by_hand(payload=None):
    """Publish one change as a pass does, its NOTIFY carrying ``payload`` (default: its seq).

    An earlier release's pass sent an empty payload.
    """
    with psycopg.connect(URL, autocommit=True) as conn, conn.transaction():
        seq = conn.execute(
            "INSERT INTO changes (type, session_id, agent_id, status, version, at) "
            "VALUES ('session.created', 's', 'elsewhere', 'created', 1, %s) RETURNING seq",
            [now_us()],
        ).fetchone()[0]
        conn.execute(
            "SELECT pg_notify(%s, %s)", [waiting.CHANNEL, str(seq) if payload is None else payload]
        )
    return seq


@pytest.mark.parametrize("payload", ["", "not a seq"])
def test_a_payload_naming_no_seq_has_the_watcher_read_where_the_feed_stands(watched, payload):
    _app, hub, looks = watched
    seq = publish_by_hand(payload)
    until(lambda: hub.horizon == seq)
    assert looks == [seq]


def test_a_follower_is_handed_the_changes_a_payload_names(watched):
    app, hub, looks = watched
    client = app.test_client()
    start = client.get("/api/changes", query_string={"cursor": "latest"}).get_json()
    pages = []
    poll = threading.Thread(
        target=lambda: pages.append(
            client.get(
                "/api/changes", query_string={"cursor": start["next_cursor"], "wait": 10}
            ).get_json()
        )
    )
    poll.start()
    until(lambda: hub.following)
    seq = publish_by_hand()
    poll.join()
    assert [change["seq"] for change in pages[0]["changes"]] == [seq]
    assert looks == []


@pytest.mark.parametrize(
    ("payloads", "through"),
    [([], None), (["7"], 7), (["7", "9"], 9), (["9", "7"], 9), (["7", ""], None), (["x"], None)],
)
def test_published_through(payloads, through):
    notifications = [psycopg.Notify(channel=waiting.CHANNEL, payload=p, pid=1) for p in payloads]
    assert waiting.published_through(notifications) == through
