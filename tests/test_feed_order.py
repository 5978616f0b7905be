"""PostgreSQL: the feed's order with writers that commit concurrently.

No lock is shared by every write: a write stalled inside its transaction
holds up no other writer; changes a host left queued are published by
another; two instances, each reaching the database through a network that
adds 2 ms each way, give every follower every change once, in order."""

import collections
import os
import threading
import time
from urllib.parse import urlsplit

import psycopg
import pytest
from databases import BACKENDS, new_database
from netdelay import DelayProxy
from servers import serving
from test_feed_server import Follower, Writer

from sessions_app import feed
from sessions_app.timefmt import now_us

pytestmark = pytest.mark.skipif("postgresql" not in BACKENDS, reason="TEST_DATABASE_URL is not set")

on_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@on_postgresql
def test_a_write_stalled_in_its_transaction_holds_up_no_other_writer(app, api, monkeypatch):
    original, entered, release = feed.record, threading.Event(), threading.Event()

    def stall(kind, session, at, **extra):
        original(kind, session, at, **extra)
        if session["agent_id"] == "stalled":
            entered.set()
            release.wait(30)

    monkeypatch.setattr(feed, "record", stall)
    stalled = {}
    thread = threading.Thread(
        target=lambda: stalled.update(type(api)(app.test_client()).create(agent_id="stalled"))
    )
    thread.start()
    try:
        assert entered.wait(10)
        # The stalled write has recorded its change and not committed.
        free = api.create(agent_id="free")
        assert thread.is_alive(), "answered while the other write was still open"
    finally:
        release.set()
        thread.join()
    page = app.test_client().get("/api/changes").get_json()["changes"]
    # In the order they committed.
    assert [c["session_id"] for c in page] == [free["id"], stalled["id"]]


@on_postgresql
def test_changes_left_in_the_queue_are_published_by_another_host(app, client, database_url):
    start = client.get("/api/changes?cursor=latest").get_json()["next_cursor"]

    def a_host_that_died_after_committing():
        time.sleep(0.3)
        with psycopg.connect(database_url) as conn:
            conn.execute(
                "INSERT INTO change_queue (type, session_id, agent_id, status, version, at)"
                " VALUES ('session.created', 'orphan', 'gone-host', 'created', 1, %s)",
                (now_us(),),
            )

    thread = threading.Thread(target=a_host_that_died_after_committing)
    thread.start()
    page = client.get(f"/api/changes?cursor={start}&wait=10").get_json()
    thread.join()
    assert [c["session_id"] for c in page["changes"]] == ["orphan"]


WRITERS_PER_INSTANCE = 8
WRITE_SECONDS = float(os.environ.get("FEED_TEST_WRITE_SECONDS", "10")) * 0.6


def test_two_instances_over_a_slow_network_give_every_follower_every_change_once(tmp_path):
    with new_database("postgresql", tmp_path) as database_url:
        upstream = urlsplit(database_url)
        hosts = []
        with (
            DelayProxy((upstream.hostname, upstream.port), 0.002) as near,
            DelayProxy((upstream.hostname, upstream.port), 0.002) as far,
        ):
            for name, proxy in (("a", near), ("b", far)):
                (tmp_path / name).mkdir()
                hosts.append(
                    serving(
                        tmp_path / name,
                        DATABASE_URL=proxy.url_for(database_url),
                        WEB_CONCURRENCY="4",
                        GUNICORN_THREADS="4",
                    )
                )
            with hosts[0] as (first, _), hosts[1] as (second, _):
                followers = [Follower(first), Follower(second)]
                for follower in followers:
                    follower.start()
                until = time.monotonic() + WRITE_SECONDS
                writers = [
                    Writer(base_url, until, seed=n * 2 + i)
                    for n in range(WRITERS_PER_INSTANCE)
                    for i, base_url in enumerate((first, second))
                ]
                for writer in writers:
                    writer.start()
                for writer in writers:
                    writer.join()
                for follower in followers:
                    follower.stop.set()
                for follower in followers:
                    follower.join(60)
                    assert not follower.is_alive()
                    assert follower.errors == []
    assert [f for w in writers for f in w.failures] == []
    acknowledged = sum((w.acknowledged for w in writers), collections.Counter())
    assert sum(acknowledged.values()) > 100, "the writers must have written something"
    seen_first, seen_second = (follower.seen for follower in followers)
    seqs = [c["seq"] for c in seen_first]
    assert seqs == sorted(set(seqs)), "in seq order, each once"
    assert seen_second == seen_first, "both instances tell the same feed"
    assert collections.Counter(c["type"] for c in seen_first) == acknowledged
    versions = collections.defaultdict(list)
    for change in seen_first:
        versions[change["session_id"]].append(change["version"])
    for session_id, of_session in versions.items():
        # A session's changes in the order they were committed (a tombstone repeats the last).
        assert of_session == sorted(of_session), session_id
