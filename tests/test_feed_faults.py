"""The change feed under faults, each window made deterministic: a long poll that times out
as a change is handed over, a prune in the middle of a stream, a stream whose client
stops reading, a quiet filtered stream, waiters catching up while the pool is small,
and a change that comes right after a stream opens."""

import json
import sqlite3
import threading
import time

import pytest
from test_feed_stream import open_stream, parse, read_all

from sessions_app import feed
from sessions_app.db import connected
from sessions_app.feed import follow, reading
from sessions_app.feed import hub as waiting
from sessions_app.timefmt import now_us


def changes(client, **params):
    response = client.get("/api/changes", query_string=params)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def until(condition, seconds=5):
    """Wait until ``condition()`` holds (a few seconds at most); fail if it never does."""
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def the_subscription(app):
    with app.app_context():
        hub = feed.current_hub()
    until(lambda: hub.subscriptions)
    return hub, next(iter(hub.subscriptions))


@pytest.fixture
def streaming(app):
    app.config.update(STREAM_MAX_SECONDS=3, STREAM_HEARTBEAT_SECONDS=1)
    return app


# -- 1. a long poll that times out as a change is handed over ----------------------


def test_a_long_poll_timing_out_as_a_change_arrives_never_skips_it(app, api, client, monkeypatch):
    """The wait ends by time; the hub hands a change over before the answer is made."""
    start = changes(client, cursor="latest")["next_cursor"]
    writer = type(api)(app.test_client())
    original, made = waiting.Subscription.wait, {}

    def times_out_as_a_change_arrives(subscription, timeout):
        ready = original(subscription, timeout)
        if not ready and not made:
            thread = threading.Thread(target=lambda: made.update(writer.create(agent_id="late")))
            thread.start()
            thread.join()
            until(lambda: subscription.pending)  # handed over, not yet taken
        return ready

    monkeypatch.setattr(waiting.Subscription, "wait", times_out_as_a_change_arrives)
    page = changes(client, cursor=start, wait=1)
    monkeypatch.undo()
    returned = [c["session_id"] for c in page["changes"]]
    after = [c["session_id"] for c in changes(client, cursor=page["next_cursor"])["changes"]]
    # Either in this answer or after its cursor: never behind it.
    assert returned + after == [made["id"]]


def test_a_stopping_worker_answers_its_long_polls_with_what_was_handed_over(
    app, api, client, monkeypatch
):
    start = changes(client, cursor="latest")["next_cursor"]
    writer = type(api)(app.test_client())
    original, made = waiting.Subscription.wait, {}

    def stops_as_a_change_arrives(subscription, timeout):
        if not made:
            thread = threading.Thread(target=lambda: made.update(writer.create(agent_id="last")))
            thread.start()
            thread.join()
            until(lambda: subscription.pending)
            waiting.stop_waiting()
            return False
        return original(subscription, timeout)

    monkeypatch.setattr(waiting.Subscription, "wait", stops_as_a_change_arrives)
    try:
        page = changes(client, cursor=start, wait=10)
    finally:
        waiting._stopping.clear()
    monkeypatch.undo()
    after = changes(client, cursor=page["next_cursor"])["changes"]
    assert [c["session_id"] for c in page["changes"] + after] == [made["id"]]


# -- 2. a prune in the middle of a stream -----------------------------------------------


def test_a_stream_ends_rather_than_jump_over_changes_prune_removed(
    streaming, api, client, monkeypatch
):
    monkeypatch.setattr(follow, "_STREAM_BATCH", 2)
    for n in range(4):
        api.create(agent_id=f"old{n}")
    cutoff = now_us()
    time.sleep(0.002)
    api.create(agent_id="new0")
    api.create(agent_id="new1")
    seqs = [c["seq"] for c in changes(client)["changes"]]
    response = open_stream(streaming, cursor="0")
    chunks = response.response
    got = [next(chunks) for _ in range(3)]  # the opening comment, events 1 and 2
    with streaming.app_context():
        assert feed.remove_older_than(cutoff) == 4
    got.extend(chunks)
    response.close()
    events, comments = parse(got)
    assert [int(e["id"]) for e in events] == seqs[:2], "no event after a gap"
    assert comments[-1].startswith("stream closed")
    resumed = open_stream(streaming, headers={"Last-Event-ID": str(seqs[1])})
    assert resumed.status_code == 410


@pytest.mark.parametrize("only", [{}, {"agent_id": "old1"}], ids=["rows", "no-rows"])
def test_a_page_read_as_prune_removes_what_follows_its_cursor_is_a_410(
    app, api, client, monkeypatch, only
):
    for n in range(3):
        api.create(agent_id=f"old{n}")
    cutoff = now_us()
    time.sleep(0.002)
    api.create(agent_id="new")
    seqs = [c["seq"] for c in changes(client)["changes"]]
    read_rows = reading._page.rows

    def pruned_first(*args, **kwargs):
        # The page has read where the feed stands; retention removes the old changes now.
        monkeypatch.setattr(reading._page, "rows", read_rows)
        with app.app_context():
            assert feed.remove_older_than(cutoff) == 3
        return read_rows(*args, **kwargs)

    monkeypatch.setattr(reading._page, "rows", pruned_first)
    response = client.get("/api/changes", query_string={"cursor": seqs[0], **only})
    assert response.status_code == 410, f"a page past a gap: {response.get_json()}"
    assert client.get("/api/changes", query_string={"cursor": seqs[2]}).status_code == 200


def test_a_long_poll_whose_watcher_fell_behind_retention_ends_before_the_gap(
    app, api, client, monkeypatch
):
    hub, held, cursor = held_watcher(app, api, client, monkeypatch)
    answer = {}
    poll = threading.Thread(
        target=lambda: answer.update(changes(client, cursor=cursor, wait=5)), daemon=True
    )
    poll.start()
    until(lambda: hub.following)
    behind_retention(app, api, held)
    poll.join(10)

    assert answer["changes"] == [], "a change handed over past the removed ones"
    assert answer["next_cursor"] == cursor
    gone = client.get("/api/changes", query_string={"cursor": cursor})
    assert gone.status_code == 410


@pytest.mark.parametrize("opened", ["at-cursor", "from-now"])
def test_a_stream_whose_watcher_fell_behind_retention_ends_before_the_gap(
    streaming, api, client, monkeypatch, opened
):
    streaming.config.update(STREAM_MAX_SECONDS=30)
    hub, held, cursor = held_watcher(streaming, api, client, monkeypatch)
    # From now: the client knows no position but the one the stream gives.
    response = open_stream(streaming, **({"cursor": cursor} if opened == "at-cursor" else {}))
    got = []
    reader = threading.Thread(target=lambda: got.extend(read_all(response)), daemon=True)
    reader.start()
    until(lambda: hub.following)
    behind_retention(streaming, api, held)
    reader.join(10)

    assert not reader.is_alive(), "the stream went on past the removed changes"
    positions = []
    events, comments = parse(got, positions)
    assert events == [], "an event past the removed changes"
    assert comments[-1].startswith("stream closed")
    assert positions == [int(cursor)] * 2, "it said where it began and where it ended"
    resumed = open_stream(streaming, headers={"Last-Event-ID": str(positions[-1])})
    assert resumed.status_code == 410


def held_watcher(app, api, client, monkeypatch):
    """Return ``(hub, held, cursor)``: the watcher waits for ``held`` before its next read.

    As a paused host's would; ``cursor`` is where the feed stands, past one change.
    """
    api.create(agent_id="before")
    with app.app_context():
        hub = feed.current_hub()
    held, fetch = threading.Event(), hub.fetch
    monkeypatch.setattr(hub, "fetch", lambda *args: held.wait(10) and fetch(*args))
    return hub, held, str(changes(client, cursor="latest")["next_cursor"])


def behind_retention(app, api, held):
    """With the watcher ``held``, record changes and remove the first ones; then let it read.

    Three changes go (the one before the follower's position and the two
    after it); the last one made stays, past the gap.
    """
    for n in range(2):
        api.create(agent_id=f"old{n}")
    cutoff = now_us()
    time.sleep(0.002)
    api.create(agent_id="new")
    with app.app_context():
        assert feed.remove_older_than(cutoff) == 3
    held.set()


# -- 3. a stream whose client stops reading ---------------------------------------------


def test_a_stream_that_falls_its_backlog_behind_ends_and_resumes_losing_nothing(streaming, api):
    streaming.config.update(STREAM_BACKLOG_MAX=3, STREAM_MAX_SECONDS=30)
    response = open_stream(streaming)
    chunks = response.response
    first = []
    # The client reads the opening and one event, then stops reading: the
    # stream is left following, with its event handed over.
    reader = threading.Thread(target=lambda: first.extend(next(chunks) for _ in range(2)))
    reader.start()
    with streaming.app_context():
        until(lambda: feed.current_hub().following)
    made = [api.create(agent_id="a0")["id"]]
    reader.join()
    made += [api.create(agent_id=f"a{n}")["id"] for n in range(1, 11)]
    hub, subscription = the_subscription(streaming)
    until(lambda: subscription.overflowed)
    assert len(subscription.pending) == 3, "what it holds is bounded"
    rest = first + list(chunks)
    response.close()
    events, comments = parse(rest)
    assert [json.loads(e["data"])["session_id"] for e in events] == made[:4]
    assert comments[-1].startswith("stream closed")
    assert len(hub.subscriptions) == 0
    streaming.config.update(STREAM_MAX_SECONDS=1)
    resumed = read_all(open_stream(streaming, headers={"Last-Event-ID": events[-1]["id"]}))
    resumed, _ = parse(resumed)
    assert [json.loads(e["data"])["session_id"] for e in resumed] == made[4:]


# -- 8a. a quiet filtered stream carries its position --------------------------------------


def test_a_quiet_filtered_stream_sends_its_position_and_resumes_past_removed_changes(
    streaming, api
):
    api.create(agent_id="before")
    chunks = []
    reader = threading.Thread(
        target=lambda: chunks.extend(read_all(open_stream(streaming, agent_id="rare")))
    )
    reader.start()
    time.sleep(0.3)
    for n in range(5):
        api.create(agent_id=f"other{n}")
    reader.join()
    positions = []
    events, _ = parse(chunks, positions)
    assert events == []
    with streaming.app_context(), connected():
        newest = feed.marks()[0]
        feed.remove_older_than(now_us() + 1)  # every change so far
    assert positions and positions[-1] == newest, "the last heartbeat is past what it skipped"
    streaming.config.update(STREAM_MAX_SECONDS=1)
    resumed = open_stream(streaming, agent_id="rare", headers={"Last-Event-ID": str(positions[-1])})
    assert resumed.status_code == 200, "nothing it wanted was lost: no 410"
    resumed.close()


# -- 8c. waiters catching up do not take the ordinary requests' connections ---------------


def test_a_waiter_catching_up_holds_none_of_the_requests_pool(database_url, monkeypatch):
    from sessions_app import create_app, db, migrations

    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": database_url,
            "DATABASE_POOL_SIZE": 1,
            "DATABASE_POOL_TIMEOUT": 1,
            "STREAM_MAX_SECONDS": 1,
        }
    )
    migrations.upgrade()
    try:
        client = app.test_client()
        start = changes(client, cursor="latest")["next_cursor"]
        for n in range(3):
            assert client.post("/api/sessions", json={"agent_id": f"a{n}"}).status_code == 201
        original, entered, release = reading.page, threading.Event(), threading.Event()

        def slow_catch_up(*args, **kwargs):
            if threading.current_thread().name == "streamer":
                entered.set()
                release.wait(10)
            return original(*args, **kwargs)

        monkeypatch.setattr(reading, "page", slow_catch_up)
        streamer = threading.Thread(
            target=lambda: read_all(open_stream(app, cursor=start)), name="streamer"
        )
        streamer.start()
        try:
            assert entered.wait(10)
            # The stream is inside its catch-up read: the one pooled connection is free.
            assert client.get("/api/sessions").status_code == 200
        finally:
            release.set()
            streamer.join()
    finally:
        db.database.close_all()


# -- 9. a change right after a stream opens -----------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_change_from_another_process_right_after_a_stream_opens_comes_at_once(
    streaming, api, monkeypatch, database_url
):
    """An idle watcher sleeps; a stream that starts following must wake it.

    The change is written outside this process (no announcement to its hub):
    the watcher must be looking for it already.
    """
    monkeypatch.setattr(waiting, "IDLE_INTERVAL", 30, raising=False)
    api.create()
    response = open_stream(streaming)
    chunks = response.response
    next(chunks)  # open: subscribed, not yet following
    time.sleep(0.2)  # the watcher looked, found no follower, and went to sleep
    got, arrived = [], threading.Event()

    def read_one():
        got.append(next(chunks))  # starts following, then waits
        got.append(time.monotonic())
        arrived.set()

    reader = threading.Thread(target=read_one)
    reader.start()
    with streaming.app_context():
        hub = feed.current_hub()
    until(lambda: hub.following)
    path = database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as other:
        other.execute(
            "INSERT INTO changes (type, session_id, agent_id, status, version, at) "
            "VALUES ('session.created', 's', 'elsewhere', 'created', 1, ?)",
            (now_us(),),
        )
    began = time.monotonic()
    assert arrived.wait(5)
    reader.join()
    response.close()
    assert b"elsewhere" in got[0]
    # POLL_INTERVAL (10 ms), not the idle watcher's sleep; generous for a busy machine.
    assert got[1] - began < 0.5
