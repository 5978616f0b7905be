"""Prune while a real Gunicorn serves writers: no writer fails, only expired sessions go.

Kept to seconds for ``make test``; ``make bench`` runs the same at 50,000
sessions and reports the writers' latency meanwhile.
"""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from servers import ROOT, serving

from sessions_app import create_app, db, migrations
from sessions_app.feed import Change
from sessions_app.ids import new_session_id
from sessions_app.models import Message, Session
from sessions_app.timefmt import now_us

pytestmark = pytest.mark.server

FLASK = Path(sys.executable).parent / "flask"
DAY = 86_400
EXPIRED, MESSAGES_EACH, KEPT = 1_200, 10, 200
WRITERS = 8


def seed(url):
    """Expired final sessions with messages, and sessions that must stay; return their ids."""
    create_app({"DATABASE_URL": url})
    migrations.upgrade()
    now = now_us()
    old, recent = now - 2 * DAY * 1_000_000, now - 60 * 1_000_000
    groups = {
        "expired": [(f"expired-{n % 3}", "completed" if n % 2 else "failed", old, MESSAGES_EACH)
                    for n in range(EXPIRED)],
        "quiet-active": [("quiet-active", "active", old, 2) for _ in range(KEPT)],
        "recent-final": [("recent-final", "completed", recent, 2) for _ in range(KEPT)],
    }  # fmt: skip
    ids = {}
    with db.database.connection_context():
        for group, rows in groups.items():
            sessions, messages = [], []
            for agent, status, at, count in rows:
                session_id = new_session_id(at - 1)
                sessions.append({
                    "id": session_id, "agent_id": agent, "task_id": None, "status": status,
                    "prompt": None, "data": {}, "created_at": at - 1, "last_active": at,
                    "status_changed_at": at, "message_count": count,
                })  # fmt: skip
                messages += [
                    {"session": session_id, "seq": seq, "message_id": f"msg-{seq}",
                     "role": "user", "content": "x", "timestamp": at}
                    for seq in range(1, count + 1)
                ]  # fmt: skip
            with db.database.atomic():
                for start in range(0, len(sessions), 500):
                    Session.insert_many(sessions[start : start + 500]).execute()
                for start in range(0, len(messages), 2000):
                    Message.insert_many(messages[start : start + 2000]).execute()
            ids[group] = [s["id"] for s in sessions]
    db.database.close_all()
    return ids


def writer(base_url, stop, quiet, made, failures):
    """Create, message and complete sessions, and message quiet ones, until ``stop``."""
    http = requests.Session()
    n = 0
    while not stop.is_set():
        n += 1
        try:
            created = http.post(f"{base_url}/api/sessions", json={"agent_id": "writer"}, timeout=30)
            if created.status_code != 201:
                failures.append(("create", created.status_code))
                continue
            session_id = created.json()["id"]
            made.append(session_id)
            for path, body in (
                (f"/api/sessions/{session_id}/message", {"content": "hi"}),
                (f"/api/sessions/{quiet[n % len(quiet)]}/message", {"content": "still here"}),
            ):
                sent = http.post(base_url + path, json=body, timeout=30)
                if sent.status_code != 201:
                    failures.append((path, sent.status_code))
            done = http.patch(
                f"{base_url}/api/sessions/{session_id}", json={"status": "completed"}, timeout=30
            )
            if done.status_code != 200:
                failures.append(("complete", done.status_code))
        except requests.RequestException as error:
            failures.append(("error", repr(error)))


def count(base_url, agent_id):
    answer = requests.get(f"{base_url}/api/sessions/count", params={"agent_id": agent_id})
    return answer.json()["count"]


def test_prune_under_writers_deletes_only_the_expired(empty_database_url, tmp_path):
    url = empty_database_url
    ids = seed(url)
    env = {"DATABASE_URL": url, "SESSION_RETENTION_SECONDS": str(DAY)}
    with serving(tmp_path, WEB_CONCURRENCY="2", GUNICORN_THREADS="4", **env) as (base_url, _):
        assert count(base_url, "expired-0") == EXPIRED // 3
        stop, made, failures = threading.Event(), [], []
        writers = [
            threading.Thread(
                target=writer, args=(base_url, stop, ids["quiet-active"], made, failures)
            )
            for _ in range(WRITERS)
        ]
        for thread in writers:
            thread.start()
        try:
            pruned = subprocess.run(
                [str(FLASK), "--app", "sessions_app", "prune", "--batch", "50"],
                cwd=ROOT,
                env={
                    **os.environ,
                    **env,
                    "LOG_FORMAT": "json",
                    "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
                },
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            stop.set()
            for thread in writers:
                thread.join()

        assert pruned.returncode == 0, pruned.stderr
        total = EXPIRED * MESSAGES_EACH
        *log, summary = pruned.stdout.splitlines()
        assert summary.startswith(
            f"Deleted {EXPIRED:,} sessions, {total:,} messages, 0 keys, 0 changes in "
        )
        assert failures == []
        assert made, "the writers wrote while prune ran"
        for agent in ("expired-0", "expired-1", "expired-2"):
            assert count(base_url, agent) == 0
        assert count(base_url, "quiet-active") == KEPT
        assert count(base_url, "recent-final") == KEPT
        assert count(base_url, "writer") == len(made)
        for session_id in ids["expired"][:20]:
            assert requests.get(f"{base_url}/api/sessions/{session_id}").status_code == 404
        messages = [json.loads(line)["message"] for line in log]
        batches = [message for message in messages if message.startswith("Pruned a batch")]
        assert len(batches) == EXPIRED // 50
        metrics = requests.get(f"{base_url}/metrics").text
        assert f'sessions_pruned_total{{what="sessions"}} {float(EXPIRED)}' in metrics
        assert f'sessions_pruned_total{{what="messages"}} {float(total)}' in metrics
        assert 'sessions_prune_runs_total{outcome="ok"} 1.0' in metrics
        assert messages[-1] == f"Pruned {EXPIRED:,} sessions, {total:,} messages, 0 keys, 0 changes"


OLD_CHANGES = 300_000


def seed_changes(url, count):
    """``count`` changes recorded 8 days ago (past the default 7 days' retention)."""
    create_app({"DATABASE_URL": url})
    migrations.upgrade()
    at = now_us() - 8 * DAY * 1_000_000
    row = {"type": "session.created", "session_id": "session-old", "agent_id": "old",
           "task_id": None, "status": "created", "version": 1, "at": at}  # fmt: skip
    # The rows are made by the database itself, in one statement: sent from
    # here, 300,000 rows took about half of the test's time.
    p = db.database.param
    numbers = (
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {p}) "
        if url.startswith("sqlite")
        else ""
    )
    source = "n" if numbers else f"generate_series(1, {p})"
    columns = ", ".join(row)
    values = ", ".join([p] * len(row))
    with db.database.connection_context(), db.database.atomic():
        db.database.execute_sql(
            f"{numbers}INSERT INTO {Change._meta.table_name} ({columns}) "
            f"SELECT {values} FROM {source}",
            [count, *row.values()] if numbers else [*row.values(), count],
        )
        assert Change.select().count() == count
    db.database.close_all()


def test_pruning_a_large_change_backlog_leaves_writers_their_turns(empty_database_url, tmp_path):
    # A writer that waits half a second for its turn gets a 503: prune's
    # batches must leave the service's writers room between them (run back to
    # back, 300,000 changes kept writers waiting about a second).
    url = empty_database_url
    seed_changes(url, OLD_CHANGES)
    env = {"DATABASE_URL": url, "SQLITE_BUSY_TIMEOUT_MS": "500"}
    with serving(tmp_path, WEB_CONCURRENCY="2", GUNICORN_THREADS="4", **env) as (base_url, _):
        quiet = [requests.post(f"{base_url}/api/sessions", json={"agent_id": "quiet"}).json()["id"]]
        stop, made, failures = threading.Event(), [], []
        writers = [
            threading.Thread(target=writer, args=(base_url, stop, quiet, made, failures))
            for _ in range(WRITERS)
        ]
        for thread in writers:
            thread.start()
        try:
            pruned = subprocess.run(
                [str(FLASK), "--app", "sessions_app", "prune"],
                cwd=ROOT,
                env={**os.environ, **env, "LOG_FORMAT": "json",
                     "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus")},
                capture_output=True,
                text=True,
                timeout=300,
            )  # fmt: skip
        finally:
            stop.set()
            for thread in writers:
                thread.join()

        assert pruned.returncode == 0, pruned.stderr
        summary = pruned.stdout.splitlines()[-1]
        assert summary.startswith(
            f"Deleted 0 sessions, 0 messages, 0 keys, {OLD_CHANGES:,} changes"
        )
        assert failures == []
        assert made, "the writers wrote while prune ran"
        kept = requests.get(f"{base_url}/api/changes", params={"limit": 1000}).json()["changes"]
        assert {c["agent_id"] for c in kept} == {"quiet", "writer"}
