"""Retention (section 9): prune deletes expired final sessions with their messages, only them."""

import logging
import re
import threading

import pytest
from prometheus_client import REGISTRY

from sessions_app import db, retention
from sessions_app.feed import Change
from sessions_app.idempotency_keys import IdempotencyKey
from sessions_app.models import Message, Session
from sessions_app.timefmt import now_us

HOUR = 3600
RETENTION = 2 * HOUR


def age(session_id, seconds):
    """Move a session's last_active ``seconds`` into the past, as if it had been idle."""
    with db.database.connection_context():
        Session.update(last_active=now_us() - seconds * 1_000_000).where(
            Session.id == session_id
        ).execute()


def stored_messages(session_id):
    with db.database.connection_context():
        return Message.select().where(Message.session == session_id).count()


def make(api, status, idle, messages=2, agent_id="CLAUDE_CODE"):
    """A session in ``status`` with ``messages`` messages, idle for ``idle`` seconds."""
    session = api.create(agent_id=agent_id)
    for n in range(messages):
        api.send(session["id"], f"m{n}")
    if status not in ("created", "active"):
        api.patch(session["id"], status=status)
    age(session["id"], idle)
    return session["id"]


def prune(app, **kwargs):
    with app.app_context(), db.database.connection_context():
        return retention.prune(app.config, **kwargs)


@pytest.fixture
def kept_and_expired(app, api):
    app.config["SESSION_RETENTION_SECONDS"] = RETENTION
    expired = [make(api, "completed", 3 * HOUR), make(api, "failed", 3 * HOUR, messages=0)]
    kept = [
        make(api, "completed", HOUR),  # final, but not idle long enough
        make(api, "failed", RETENTION - 60),
        make(api, "active", 3 * HOUR),  # idle long enough, but not final
        make(api, "paused", 3 * HOUR),
        make(api, "created", 3 * HOUR, messages=0),
    ]
    return kept, expired


def test_prune_deletes_expired_final_sessions_with_their_messages(app, api, kept_and_expired):
    kept, expired = kept_and_expired
    before = {session_id: api.get(session_id) for session_id in kept}

    totals = prune(app)

    assert (totals.sessions, totals.messages) == (2, 2)
    for session_id in expired:
        api.get(session_id, expect=404)
        assert stored_messages(session_id) == 0
    for session_id in kept:
        assert api.get(session_id) == before[session_id]
        assert stored_messages(session_id) == before[session_id]["message_count"]
    assert prune(app).sessions == 0, "nothing left to prune"


def test_a_dry_run_counts_and_deletes_nothing(app, api, kept_and_expired):
    _kept, expired = kept_and_expired
    totals = prune(app, dry_run=True)
    assert (totals.sessions, totals.messages) == (2, 2)
    for session_id in expired:
        api.get(session_id)


def test_without_a_retention_nothing_expires(app, api, kept_and_expired):
    app.config["SESSION_RETENTION_SECONDS"] = None
    assert prune(app).sessions == 0
    assert api.list()["sessions"] and len(api.list()["sessions"]) == 7


def test_a_change_to_a_final_session_restarts_its_clock(app, api, kept_and_expired):
    _kept, expired = kept_and_expired
    api.patch(expired[0], data={"note": "still looked at"})  # moves last_active
    assert prune(app).sessions == 1
    api.get(expired[0])


def test_prune_goes_in_batches_and_logs_and_counts_each(app, api, caplog):
    app.config["SESSION_RETENTION_SECONDS"] = RETENTION
    for _ in range(5):
        make(api, "completed", 3 * HOUR, messages=1)
    sample = {"what": "sessions"}
    before = REGISTRY.get_sample_value("sessions_pruned_total", sample) or 0
    with caplog.at_level(logging.INFO, logger="sessions_app.retention"):
        totals = prune(app, batch=2, pause=0)
    assert (totals.sessions, totals.messages) == (5, 5)
    batches = [
        re.sub(r" in [0-9.]+ ms", "", r.getMessage())
        for r in caplog.records
        if "a batch" in r.getMessage()
    ]
    assert batches == [
        "Pruned a batch of 2 sessions (2 messages); 2 sessions, 2 messages so far",
        "Pruned a batch of 2 sessions (2 messages); 4 sessions, 4 messages so far",
        "Pruned a batch of 1 sessions (1 messages); 5 sessions, 5 messages so far",
    ]
    assert caplog.records[-1].getMessage() == "Pruned 5 sessions, 5 messages, 0 keys, 0 changes"
    assert REGISTRY.get_sample_value("sessions_pruned_total", sample) == before + 5


def test_a_batch_stops_before_its_messages_pass_the_bound(app, api):
    app.config["SESSION_RETENTION_SECONDS"] = RETENTION
    for _ in range(3):
        make(api, "failed", 3 * HOUR, messages=4)
    with app.app_context(), db.database.connection_context():
        cutoff = now_us() - RETENTION * 1_000_000
        assert len(retention.next_batch(cutoff, size=10, messages=8)) == 2
        assert len(retention.next_batch(cutoff, size=10, messages=11)) == 2
        assert len(retention.next_batch(cutoff, size=10, messages=12)) == 3
        assert len(retention.next_batch(cutoff, size=2, messages=100)) == 2
        # A session with more messages than the bound is a batch of its own.
        assert len(retention.next_batch(cutoff, size=10, messages=2)) == 1
    assert prune(app, batch_messages=2, pause=0).sessions == 3


def test_the_prune_command(app, api, kept_and_expired):
    runner = app.test_cli_runner()
    dry = runner.invoke(args=["prune", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.output.startswith("Would delete 2 sessions, 2 messages, 0 keys, 0 changes in ")
    done = runner.invoke(args=["prune", "--batch", "1"])
    assert done.exit_code == 0, done.output
    assert done.output.startswith("Deleted 2 sessions, 2 messages, 0 keys, 0 changes in ")
    again = runner.invoke(args=["prune"])
    assert again.output.startswith("Deleted 0 sessions, 0 messages, 0 keys, 0 changes in ")
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'sessions_prune_runs_total{outcome="dry-run"}' in metrics
    assert 'sessions_pruned_total{what="messages"}' in metrics


def test_a_bad_batch_size_is_refused(app):
    result = app.test_cli_runner().invoke(args=["prune", "--batch", "0"])
    assert result.exit_code == 2
    assert "0 is not in the range 1<=x<=10000" in result.output


def test_an_expired_session_leaves_every_endpoint_at_the_same_instant(app, api, client):
    """Read each doomed session over and over while prune deletes them one by one.

    Once any endpoint has shown a session gone, no endpoint may show it again;
    until then every one shows it whole.
    """
    app.config["SESSION_RETENTION_SECONDS"] = RETENTION
    doomed = {
        make(api, "failed", 3 * HOUR, messages=3, agent_id=f"agent-{n}"): n for n in range(12)
    }
    agents = {session_id: f"agent-{n}" for session_id, n in doomed.items()}
    pruning = threading.Thread(target=prune, args=(app,), kwargs={"batch": 1, "pause": 0.02})

    def observe(session_id):
        """Return each endpoint's answer: True when it shows the session, False when gone."""
        agent = agents[session_id]
        got = client.get(f"/api/sessions/{session_id}")
        messages = client.get(f"/api/sessions/{session_id}/messages")
        listed = api.list(agent_id=agent)["sessions"]
        counted = client.get("/api/sessions/count", query_string={"agent_id": agent}).get_json()
        seen = [
            got.status_code == 200,
            messages.status_code == 200,
            [s["id"] for s in listed] == [session_id],
            counted["count"] == 1,
        ]
        if got.status_code == 200:
            assert got.get_json()["message_count"] == 3
        if messages.status_code == 200:
            assert len(messages.get_json()["messages"]) == 3
        assert got.status_code in (200, 404) and messages.status_code in (200, 404)
        return seen

    gone, caught_midway = set(), False
    pruning.start()
    while pruning.is_alive():
        for session_id in doomed:
            for shown in observe(session_id):
                if session_id in gone:
                    assert not shown, f"{session_id} came back after it was gone"
                elif not shown:
                    gone.add(session_id)
        caught_midway |= 0 < len(gone) < len(doomed)
    pruning.join()
    assert caught_midway, "the reads must overlap the prune"
    for session_id in doomed:
        assert observe(session_id) == [False] * 4


def stored_keys():
    with db.database.connection_context():
        return IdempotencyKey.select().count()


def test_prune_forgets_idempotency_keys_past_their_time_only(app, client):
    app.config["IDEMPOTENCY_TTL_SECONDS"] = HOUR
    body = {"agent_id": "KEYED"}
    first = client.post("/api/sessions", json=body, headers={"Idempotency-Key": "old"})
    client.post("/api/sessions", json=body, headers={"Idempotency-Key": "young"})
    with db.database.connection_context():
        IdempotencyKey.update(created_at=now_us() - 2 * HOUR * 1_000_000).where(
            IdempotencyKey.key == "old"
        ).execute()

    assert prune(app, dry_run=True).keys == 1
    assert stored_keys() == 2
    totals = prune(app, pause=0)

    assert (totals.sessions, totals.keys) == (0, 1)
    assert stored_keys() == 1
    # The forgotten key is free again: the same request makes a new session.
    again = client.post("/api/sessions", json=body, headers={"Idempotency-Key": "old"})
    assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers
    assert again.get_json()["id"] != first.get_json()["id"]
    young = client.post("/api/sessions", json=body, headers={"Idempotency-Key": "young"})
    assert young.headers["Idempotent-Replayed"] == "true"


def test_an_expired_session_leaves_its_tombstone_in_the_feed(app, api, client, kept_and_expired):
    _kept, expired = kept_and_expired
    last = {session_id: api.get(session_id) for session_id in expired}
    start = client.get("/api/changes?cursor=latest").get_json()["next_cursor"]

    prune(app, pause=0)

    page = client.get(f"/api/changes?cursor={start}").get_json()
    tombstones = {c["session_id"]: c for c in page["changes"]}
    assert set(tombstones) == set(expired)
    for session_id, change in tombstones.items():
        assert change["type"] == "session.deleted"
        assert change["reason"] == "expired"
        for field in ("agent_id", "task_id", "status", "version"):
            assert change[field] == last[session_id][field], field


def test_prune_removes_changes_past_their_window_and_older_cursors_get_410(app, api, client):
    app.config["CHANGES_RETENTION_SECONDS"] = HOUR
    old = api.create(agent_id="OLD")
    api.create(agent_id="NEW")
    with db.database.connection_context():
        Change.update(at=now_us() - 2 * HOUR * 1_000_000).where(
            Change.session_id == old["id"]
        ).execute()
    seqs = [c["seq"] for c in client.get("/api/changes").get_json()["changes"]]

    assert prune(app, dry_run=True).changes == 1
    totals = prune(app, pause=0)

    assert totals.changes == 1
    kept = client.get("/api/changes").get_json()["changes"]
    assert [c["seq"] for c in kept] == seqs[1:]
    assert client.get("/api/changes?cursor=0").status_code == 410
    assert client.get(f"/api/changes?cursor={seqs[0]}").status_code == 200


def test_prune_never_leaves_a_kept_change_below_its_mark(app, api, client):
    # A change's ``at`` is read before its writer's turn to append, so a
    # later seq may hold an earlier ``at``: seq 2 is kept while 1 and 3 are old.
    app.config["CHANGES_RETENTION_SECONDS"] = HOUR
    for agent_id in ("A", "B", "C"):
        api.create(agent_id=agent_id)
    first, kept, third = [c["seq"] for c in client.get("/api/changes").get_json()["changes"]]
    with db.database.connection_context():
        Change.update(at=now_us() - 2 * HOUR * 1_000_000).where(
            Change.seq.in_([first, third])
        ).execute()

    assert prune(app, dry_run=True).changes == 1
    assert prune(app, pause=0).changes == 1

    assert [c["seq"] for c in client.get("/api/changes").get_json()["changes"]] == [kept, third]
    assert client.get(f"/api/changes?cursor={first}").status_code == 200
    assert client.get(f"/api/changes?cursor={first - 1}").status_code == 410
