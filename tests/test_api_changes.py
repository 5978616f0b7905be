"""GET /api/changes (contract section 7): what each write records, paging, filters, cursors."""

import threading
import time

import pytest
from problems import assert_problem, invalid

from sessions_app import db, feed, migrations
from sessions_app.timefmt import now_us

NOT_ISSUED = "Not a cursor this service issued."
LIMIT_RANGE = "Must be greater than or equal to 1 and less than or equal to 1000."
WAIT_RANGE = "Must be greater than or equal to 0 and less than or equal to 60."


def changes(client, expect=200, **params):
    response = client.get("/api/changes", query_string=params)
    assert response.status_code == expect, response.get_json()
    return response.get_json()


def everything(client, **params):
    """Follow next_cursor from the start until a page is empty; return every change."""
    found, cursor = [], None
    while True:
        page = changes(client, **params, **({"cursor": cursor} if cursor else {}))
        found += page["changes"]
        assert page["next_cursor"] is not None
        if not page["changes"]:
            return found
        cursor = page["next_cursor"]


def without(change, *names):
    return {key: value for key, value in change.items() if key not in names}


# -- what every write records ------------------------------------------------


def test_every_write_records_its_change(api, client):
    session = api.create(agent_id="a", task_id="t")
    updated = api.patch(session["id"], status="paused", data={"k": 1})
    receipt = api.send(session["id"], "hi", role="assistant")
    after_message = api.get(session["id"])
    api.delete(session["id"])
    created, update, message, tombstone = everything(client)
    common = {"session_id": session["id"], "agent_id": "a", "task_id": "t"}

    assert created == {
        "seq": created["seq"],
        "type": "session.created",
        **common,
        "status": "created",
        "version": 1,
        "at": session["created_at"],
    }
    assert update == {
        "seq": update["seq"],
        "type": "session.updated",
        **common,
        "status": "paused",
        "version": 2,
        "at": updated["last_active"],
        "changed": ["status", "data"],
    }
    assert message == {
        "seq": message["seq"],
        "type": "message.created",
        **common,
        "status": "paused",
        "version": 3,
        "at": receipt["timestamp"],
        "message_id": receipt["message_id"],
        "role": "assistant",
    }
    assert receipt["timestamp"] == after_message["last_active"]
    assert without(tombstone, "seq", "at") == {
        "type": "session.deleted",
        **common,
        "status": "paused",
        "version": 3,
        "reason": "deleted",
    }
    assert created["seq"] < update["seq"] < message["seq"] < tombstone["seq"]
    assert tombstone["at"] >= message["at"]


def test_a_message_to_a_created_session_records_it_active(api, client):
    session = api.create()
    api.send(session["id"])
    message = everything(client, type="message.created")[0]
    assert (message["status"], message["version"]) == ("active", 2)


def test_changed_names_only_what_changed(api, client):
    session = api.create(prompt="p", data={"a": 1})
    api.patch(session["id"], prompt="q", data={"a": 1}, status="created")
    api.patch(session["id"], data={"b": None})  # removes a key that is not there
    updates = everything(client, type="session.updated")
    assert [u["changed"] for u in updates] == [["prompt"]]


@pytest.mark.parametrize(
    "attempt",
    [
        lambda api, sid: api.patch(sid, expect=200),
        lambda api, sid: api.patch(sid, status="failed"),
        lambda api, sid: api.patch(sid, expect=409, status="completed") and None,
        lambda api, sid: api.send(sid, expect=409),
        lambda api, sid: api.patch("session-" + "0" * 28, expect=404, status="active"),
        lambda api, sid: api.delete("session-" + "0" * 28, expect=404),
        lambda api, sid: api.create(expect=422, agent_id=""),
    ],
    ids=["empty-patch", "same-status", "conflict", "message-to-final", "404", "delete-404", "422"],
)
def test_a_request_that_changes_nothing_records_nothing(api, client, attempt):
    session = api.create()
    api.patch(session["id"], status="failed")
    before = everything(client)
    attempt(api, session["id"])
    assert everything(client) == before


def test_a_failed_transaction_records_no_change(api, client, monkeypatch):
    session = api.create()
    before = everything(client)

    original = feed.record

    def record_then_fail(kind, *args, **kwargs):
        original(kind, *args, **kwargs)
        raise RuntimeError("the transaction fails after the change was written")

    monkeypatch.setattr(feed, "record", record_then_fail)
    with pytest.raises(RuntimeError):  # TESTING: Flask hands the error to the test
        client.post(f"/api/sessions/{session['id']}/message", json={"content": "x"})
    monkeypatch.undo()
    assert everything(client) == before
    assert api.get(session["id"])["message_count"] == 0


# -- paging and cursors ---------------------------------------------------------


def test_pages_follow_next_cursor_oldest_first_exactly_once(api, client):
    sessions = [api.create(agent_id=f"a{n}")["id"] for n in range(7)]
    seen, cursor, pages = [], None, 0
    while True:
        page = changes(client, limit=3, **({"cursor": cursor} if cursor else {}))
        pages += 1
        seen += page["changes"]
        if len(page["changes"]) < 3:
            break
        cursor = page["next_cursor"]
    assert [c["session_id"] for c in seen] == sessions
    seqs = [c["seq"] for c in seen]
    assert seqs == sorted(set(seqs))
    assert pages == 3
    assert page["next_cursor"] == str(seqs[-1])


def test_next_cursor_moves_past_changes_that_do_not_match(api, client):
    api.create(agent_id="other")
    api.create(agent_id="other")
    page = changes(client, agent_id="nobody")
    assert page["changes"] == []
    newest = everything(client)[-1]["seq"]
    assert page["next_cursor"] == str(newest)
    # ...and from there, the next matching change is found.
    wanted = api.create(agent_id="nobody")
    later = changes(client, agent_id="nobody", cursor=page["next_cursor"])
    assert [c["session_id"] for c in later["changes"]] == [wanted["id"]]


def test_an_empty_feed_answers_an_empty_page_with_a_cursor(client):
    assert changes(client) == {"changes": [], "next_cursor": "0"}
    assert changes(client, cursor="latest") == {"changes": [], "next_cursor": "0"}
    assert changes(client, cursor="0") == {"changes": [], "next_cursor": "0"}


def test_latest_starts_after_the_newest_change(api, client):
    api.create()
    api.create()
    newest = everything(client)[-1]["seq"]
    page = changes(client, cursor="latest")
    assert page == {"changes": [], "next_cursor": str(newest)}
    later = api.create()
    assert [c["session_id"] for c in changes(client, cursor="latest", wait=0)["changes"]] == []
    assert [c["session_id"] for c in changes(client, cursor=page["next_cursor"])["changes"]] == [
        later["id"]
    ]


def test_a_seq_is_a_cursor_that_continues_after_its_change(api, client):
    ids = [api.create()["id"] for _ in range(3)]
    first, second, third = everything(client)
    assert [c["session_id"] for c in changes(client, cursor=str(first["seq"]))["changes"]] == ids[
        1:
    ]
    assert changes(client, cursor=str(third["seq"]))["changes"] == []


FILTERS = [
    ({"agent_id": "a"}, {"s1", "s2"}),
    ({"task_id": "t"}, {"s1", "s3"}),
    ({"agent_id": "a", "task_id": "t"}, {"s1"}),
    ({"type": "message.created"}, {"s2"}),
    ({"type": "session.deleted,message.created"}, {"s2", "s3"}),
    ({"task_id": ""}, set()),
]


# A set's id lists it sorted: the same in every process (pytest-xdist's workers
# must collect the same ids; a set's order follows the string hash's seed).
@pytest.mark.parametrize(
    "filters, expected", FILTERS, ids=lambda f: repr(sorted(f) if isinstance(f, set) else f)
)
def test_filters_match_exactly(api, client, filters, expected):
    made = {
        "s1": api.create(agent_id="a", task_id="t")["id"],
        "s2": api.create(agent_id="a", task_id="u")["id"],
        "s3": api.create(agent_id="b", task_id="t")["id"],
    }
    api.send(made["s2"])
    api.delete(made["s3"])
    names = {value: key for key, value in made.items()}
    found = everything(client, **filters)
    assert {names[c["session_id"]] for c in found} == expected
    kinds = filters.get("type")
    if kinds:
        assert {c["type"] for c in found} <= set(kinds.split(","))


def test_session_id_filter_follows_one_session_and_its_tombstone(api, client):
    session = api.create()["id"]
    api.create()
    api.send(session)
    api.delete(session)
    found = everything(client, session_id=session)
    assert [c["type"] for c in found] == ["session.created", "message.created", "session.deleted"]
    assert everything(client, session_id="session-" + "0" * 28) == []
    assert everything(client, session_id="no such thing") == []


@pytest.mark.parametrize(
    "query, errors",
    [
        ("cursor=abc", {"cursor": [NOT_ISSUED]}),
        ("cursor=", {"cursor": [NOT_ISSUED]}),
        ("cursor=-1", {"cursor": [NOT_ISSUED]}),
        ("cursor=01", {"cursor": [NOT_ISSUED]}),
        ("cursor=LATEST", {"cursor": [NOT_ISSUED]}),
        ("cursor=session-zzzzzzzzzzzzzzzzzzzzzzzzzzzz", {"cursor": [NOT_ISSUED]}),
        ("cursor=9999999999", {"cursor": [NOT_ISSUED]}),
        ("cursor=99999999999999999999", {"cursor": [NOT_ISSUED]}),
        ("limit=0", {"limit": [LIMIT_RANGE]}),
        ("limit=1001", {"limit": [LIMIT_RANGE]}),
        ("wait=61", {"wait": [WAIT_RANGE]}),
        ("wait=-1", {"wait": ["Not a valid integer."]}),
        ("wait=1.5", {"wait": ["Not a valid integer."]}),
        (
            "type=session.created,nope",
            {
                "type": [
                    "Must be one or more of session.created, session.updated, message.created, "
                    "session.deleted, separated by commas; 'nope' is not one."
                ]
            },
        ),
        (
            "agent_id=%00",
            {"agent_id": ["Must not contain NUL (U+0000) or unpaired surrogate characters."]},
        ),
        ("since=1", {"since": ["Unknown field."]}),
        ("cursor=1&cursor=2", {"cursor": ["Given more than once."]}),
    ],
)
def test_bad_query_is_422(api, client, query, errors):
    api.create()
    assert_problem(client.get(f"/api/changes?{query}"), invalid(**errors))


def test_a_session_list_cursor_or_a_number_past_the_feed_is_422(api, client):
    """A message cursor is a number too: past the newest change it is a 422, below it a position."""
    for _ in range(3):
        api.create()
    listed = api.list(limit=1)["next_cursor"]
    newest = everything(client)[-1]["seq"]
    assert_problem(client.get(f"/api/changes?cursor={listed}"), invalid(cursor=[NOT_ISSUED]))
    assert_problem(client.get(f"/api/changes?cursor={newest + 1}"), invalid(cursor=[NOT_ISSUED]))


# -- retention: 410 -----------------------------------------------------------------


def gone_problem():
    return {
        "type": "about:blank",
        "title": "Gone",
        "status": 410,
        "detail": "Changes after this cursor are no longer kept (CHANGES_RETENTION_SECONDS), so "
        "some may be lost: list the sessions again, then follow the feed from cursor=latest.",
    }


def test_a_cursor_before_removed_changes_is_410(api, client, app):
    old = [api.create()["id"] for _ in range(3)]
    cutoff = now_us()
    time.sleep(0.002)
    kept = api.create()["id"]
    first, second, third, fourth = everything(client)
    with app.app_context():
        assert feed.count_older_than(cutoff) == 3
        assert feed.remove_older_than(cutoff, batch=2) == 3
        assert feed.count_older_than(cutoff) == 0
    for cursor in ("0", str(first["seq"]), str(second["seq"])):
        assert_problem(client.get(f"/api/changes?cursor={cursor}"), gone_problem())
    # From the newest change removed on, nothing was lost.
    page = changes(client, cursor=str(third["seq"]))
    assert [c["session_id"] for c in page["changes"]] == [kept]
    assert [c["session_id"] for c in changes(client)["changes"]] == [kept]
    assert old  # the sessions themselves are untouched
    assert len(api.list()["sessions"]) == 4


def test_when_every_change_is_removed_the_feed_continues_from_the_mark(api, client, app):
    api.create()
    api.create()
    newest = everything(client)[-1]["seq"]
    with app.app_context():
        feed.remove_older_than(now_us() + 1)
    assert changes(client) == {"changes": [], "next_cursor": str(newest)}
    assert changes(client, cursor="latest") == {"changes": [], "next_cursor": str(newest)}
    assert changes(client, cursor=str(newest))["changes"] == []
    assert_problem(client.get(f"/api/changes?cursor={newest - 1}"), gone_problem())
    # seqs are never reused, even with the table empty.
    later = api.create()
    (change,) = changes(client, cursor=str(newest))["changes"]
    assert change["session_id"] == later["id"]
    assert change["seq"] > newest


# -- long polls ------------------------------------------------------------------


def later(delay, action):
    """Run ``action`` on another thread after ``delay`` seconds; return the thread."""

    def run():
        time.sleep(delay)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_long_poll_is_woken_by_a_matching_write(app, api, client):
    api.create()
    start = changes(client, cursor="latest")["next_cursor"]
    writer_api = type(api)(app.test_client())
    made = {}
    thread = later(0.3, lambda: made.update(writer_api.create(agent_id="w")))
    began = time.monotonic()
    page = changes(client, cursor=start, wait=10)
    waited = time.monotonic() - began
    thread.join()
    assert [c["session_id"] for c in page["changes"]] == [made["id"]]
    assert page["next_cursor"] == str(page["changes"][0]["seq"])
    assert 0.2 < waited < 5


def test_a_long_poll_sleeps_through_changes_that_do_not_match(app, api, client):
    writer_api = type(api)(app.test_client())
    other = {}
    thread = later(0.2, lambda: other.update(writer_api.create(agent_id="other")))
    began = time.monotonic()
    page = changes(client, cursor="latest", agent_id="wanted", wait=1)
    thread.join()
    assert page["changes"] == []
    assert time.monotonic() - began >= 1
    # The cursor moved past the change that did not match.
    assert page["next_cursor"] == str(everything(client)[-1]["seq"])


def test_a_long_poll_answers_at_once_when_a_change_is_there(api, client):
    api.create()
    began = time.monotonic()
    assert len(changes(client, wait=30)["changes"]) == 1
    assert time.monotonic() - began < 5


def test_a_long_poll_that_times_out_gives_an_empty_page(client):
    began = time.monotonic()
    assert changes(client, cursor="latest", wait=1) == {"changes": [], "next_cursor": "0"}
    assert 1 <= time.monotonic() - began < 6


def test_a_full_house_is_503_with_retry_after(database_url):
    from sessions_app import create_app

    app = create_app({"TESTING": True, "DATABASE_URL": database_url, "FEED_WAITERS_MAX": 1})
    migrations.upgrade()
    try:
        app.test_client().post("/api/sessions", json={"agent_id": "a"})
        waiter = later(0, lambda: app.test_client().get("/api/changes?cursor=latest&wait=2"))
        time.sleep(0.5)
        response = app.test_client().get("/api/changes?cursor=latest&wait=2")
        assert_problem(
            response,
            {
                "type": "about:blank",
                "title": "Service Unavailable",
                "status": 503,
                "detail": "This server cannot hold another waiting request or stream right now; "
                "retry later.",
            },
        )
        assert response.headers["Retry-After"] == "2"
        # A request with something to answer at once needs no slot.
        assert app.test_client().get("/api/changes?wait=2").status_code == 200
        waiter.join()
        assert app.test_client().get("/api/changes?cursor=latest&wait=1").status_code == 200
    finally:
        db.database.close_all()


class _CountedEvent(threading.Event):
    def __init__(self):
        super().__init__()
        self.sets = 0

    def set(self):
        self.sets += 1
        super().set()


# SQLite only: on PostgreSQL a change gets its seq from a publishing pass.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_sqlite_write_with_no_one_following_wakes_no_watcher(app, api, client):
    """The hub moves past the write's change itself; a follower still gets the next ones."""
    with app.app_context():
        hub = feed.current_hub()
        hub.start()  # as the first waiter would; no one follows
    hub._poke = poke = _CountedEvent()
    made = [api.create(agent_id=f"a{n}") for n in range(5)]
    newest = everything(client)[-1]
    assert newest["session_id"] == made[-1]["id"]
    assert poke.sets == 0
    assert hub.horizon == newest["seq"]
    # With someone following, a write wakes the watcher, which hands it over.
    writer_api = type(api)(app.test_client())
    thread = later(0.3, lambda: writer_api.create(agent_id="followed"))
    page = changes(client, cursor=str(newest["seq"]), wait=10)
    thread.join()
    assert [c["agent_id"] for c in page["changes"]] == ["followed"]
    assert poke.sets >= 1
