"""GET /api/changes as text/event-stream: events, resumption, heartbeats, the end of a stream."""

import json
import threading
import time

import pytest
from problems import assert_problem, invalid

from sessions_app import feed
from sessions_app.timefmt import now_us

STREAM = {"Accept": "text/event-stream"}


def parse(chunks, positions=None):
    """Parse an event stream as the WHATWG standard says; return (events, comments).

    Each event is a dict of its fields; ``data`` lines are joined with newlines.
    A block with no ``data`` fires no event; the ``id`` it carries (a
    heartbeat's position) is appended to ``positions`` when given.
    """
    text = b"".join(chunks).decode("utf-8")
    assert "\r" not in text
    events, comments, fields = [], [], {}
    for line in text.split("\n"):
        if line == "":
            if "data" in fields:
                events.append(fields)
            elif fields and positions is not None:
                assert set(fields) == {"id"}, fields
                positions.append(int(fields["id"]))
            fields = {}
        elif line.startswith(":"):
            comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data" and "data" in fields:
                fields["data"] += "\n" + value
            else:
                fields[name] = value
    assert fields == {}, "the stream ended inside an event"
    return events, comments


@pytest.fixture
def streaming(app):
    app.config.update(STREAM_MAX_SECONDS=2, STREAM_HEARTBEAT_SECONDS=1)
    return app


def open_stream(app, headers=None, **params):
    response = app.test_client().get(
        "/api/changes", query_string=params, headers={**STREAM, **(headers or {})}, buffered=False
    )
    return response


def read_all(response):
    try:
        return list(response.response)
    finally:
        response.close()


def test_events_parse_as_the_standard_says(streaming, api, client):
    session = api.create(agent_id="a")
    api.send(session["id"], "line one\nline two")
    api.patch(session["id"], status="completed")
    api.delete(session["id"])
    expected = client.get("/api/changes").get_json()["changes"]
    response = open_stream(streaming, cursor="0")
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    chunks = read_all(response)
    assert chunks[0].startswith(b":"), "a first comment tells the client the stream is open"
    events, comments = parse(chunks)
    assert [int(e["id"]) for e in events] == [c["seq"] for c in expected]
    assert [e["event"] for e in events] == [c["type"] for c in expected]
    assert [json.loads(e["data"]) for e in events] == expected
    assert all(set(e) == {"id", "event", "data"} for e in events)
    assert all("\n" not in e["data"] for e in events)


def test_a_stream_without_cursor_starts_from_now_and_sees_new_changes(streaming, api):
    api.create(agent_id="before")
    # Its position is taken when the response is made, before any event is read.
    response = open_stream(streaming)
    chunks = []
    reader = threading.Thread(target=lambda: chunks.extend(read_all(response)))
    reader.start()
    made = [api.create(agent_id="after")["id"] for _ in range(3)]
    reader.join()
    events, _ = parse(chunks)
    assert [json.loads(e["data"])["session_id"] for e in events] == made


def test_filters_apply_to_a_stream(streaming, api):
    chunks = []
    reader = threading.Thread(
        target=lambda: chunks.extend(read_all(open_stream(streaming, type="message.created")))
    )
    reader.start()
    time.sleep(0.5)
    session = api.create()["id"]
    api.send(session)
    api.delete(session)
    reader.join()
    events, _ = parse(chunks)
    assert [e["event"] for e in events] == ["message.created"]


def test_resuming_with_last_event_id_loses_nothing(streaming, api, client):
    for n in range(5):
        api.create(agent_id=f"a{n}")
    every = client.get("/api/changes").get_json()["changes"]
    first_events, _ = parse(read_all(open_stream(streaming, cursor="0")))
    last_seen = first_events[1]["id"]
    # Last-Event-ID wins over cursor.
    resumed, _ = parse(
        read_all(open_stream(streaming, headers={"Last-Event-ID": last_seen}, cursor="latest"))
    )
    assert [int(e["id"]) for e in resumed] == [c["seq"] for c in every[2:]]


def test_heartbeats_come_while_quiet_and_the_stream_ends_after_max_seconds(streaming):
    streaming.config.update(STREAM_MAX_SECONDS=3)
    began = time.monotonic()
    chunks = read_all(open_stream(streaming))
    took = time.monotonic() - began
    events, comments = parse(chunks)
    assert events == []
    assert comments.count("keep-alive") >= 2
    assert 3 <= took < 6


@pytest.mark.parametrize("value", ["abc", "-1", "", "1.0", "latest", "01", "9" * 20])
def test_a_malformed_last_event_id_is_422_before_any_stream(streaming, api, value):
    api.create()
    response = open_stream(streaming, headers={"Last-Event-ID": value})
    assert_problem(response, invalid(**{"Last-Event-ID": ["Not an event id this service sent."]}))


def test_a_last_event_id_past_the_feed_is_422(streaming, api, client):
    api.create()
    newest = int(client.get("/api/changes?cursor=latest").get_json()["next_cursor"])
    response = open_stream(streaming, headers={"Last-Event-ID": str(newest + 1)})
    assert_problem(response, invalid(**{"Last-Event-ID": ["Not a cursor this service issued."]}))


def test_a_last_event_id_before_removed_changes_is_410(streaming, api, client):
    api.create()
    api.create()
    first = client.get("/api/changes").get_json()["changes"][0]
    with streaming.app_context():
        feed.remove_older_than(now_us() + 1)
    response = open_stream(streaming, headers={"Last-Event-ID": str(first["seq"])})
    assert response.status_code == 410
    assert response.mimetype == "application/problem+json"
    assert "cursor=latest" in response.get_json()["detail"]


def test_a_bad_cursor_on_a_stream_is_422(streaming):
    response = open_stream(streaming, cursor="nope")
    assert_problem(response, invalid(cursor=["Not a cursor this service issued."]))


def test_a_closed_stream_gives_its_slot_back(streaming, api):
    api.create()
    response = open_stream(streaming)
    with streaming.app_context():
        hub = feed.current_hub()
        assert len(hub.subscriptions) == 1
        next(iter(response.response))
        response.close()
        assert len(hub.subscriptions) == 0


def test_a_full_house_refuses_a_stream_at_once(streaming, api):
    streaming.config["FEED_WAITERS_MAX"] = 1
    first = open_stream(streaming)
    try:
        response = open_stream(streaming)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "2"
    finally:
        first.close()
    read_all(open_stream(streaming))
