"""A bulk change of 5,000 sessions while 16 clients write, on a real Gunicorn.

No writer fails, every session is changed once, and the feed holds exactly
one change per changed session.  ``make bench`` runs it at 10,000 sessions
and reports what the writers keep of their throughput meanwhile.
"""

import random
import threading
from collections import Counter

import pytest
import requests
from servers import serving

from sessions_app import create_app, db, migrations
from sessions_app.ids import new_session_id
from sessions_app.models import Session
from sessions_app.timefmt import now_us

pytestmark = pytest.mark.server

SESSIONS, WRITERS = 5_000, 16


def seed(url):
    """Store SESSIONS sessions of agent ``bulk`` directly; return their ids."""
    create_app({"DATABASE_URL": url})
    migrations.upgrade()
    start = now_us() - 3_600_000_000
    rows = [
        {"id": new_session_id(start + n), "agent_id": "bulk", "task_id": None,
         "status": "created" if n % 2 else "active", "prompt": None, "data": {"n": n},
         "created_at": start + n, "last_active": start + n, "status_changed_at": start + n,
         "message_count": 0, "version": 1}
        for n in range(SESSIONS)
    ]  # fmt: skip
    with db.database.connection_context(), db.database.atomic():
        for at in range(0, len(rows), 500):
            Session.insert_many(rows[at : at + 500]).execute()
    db.database.close_all()
    return [row["id"] for row in rows]


def writer(base_url, stop, targets, failures, writes):
    """Create and message sessions, and change the data of bulk's own, until ``stop``."""
    http = requests.Session()
    pick = random.Random(len(writes))
    while not stop.is_set():
        try:
            made = http.post(f"{base_url}/api/sessions", json={"agent_id": "writer"}, timeout=30)
            answers = [made]
            if made.status_code == 201:
                path = f"{base_url}/api/sessions/{made.json()['id']}/message"
                answers.append(http.post(path, json={"content": "hi"}, timeout=30))
            target = pick.choice(targets)
            answers.append(
                http.patch(
                    f"{base_url}/api/sessions/{target}",
                    json={"data": {"touched": pick.random()}},
                    timeout=30,
                )
            )
            for answer in answers:
                if answer.status_code >= 300:
                    failures.append((answer.request.method, answer.url, answer.status_code))
            writes.append(len(answers))
        except requests.RequestException as error:
            failures.append(("error", repr(error)))


def feed_after(base_url, cursor, **filters):
    found = []
    while True:
        page = requests.get(
            f"{base_url}/api/changes",
            params={"cursor": cursor, "limit": 1000, **filters},
            timeout=30,
        ).json()
        found += page["changes"]
        if page["next_cursor"] == cursor:
            return found
        cursor = page["next_cursor"]


def test_a_bulk_change_under_16_writers_changes_each_session_once(empty_database_url, tmp_path):
    ids = seed(empty_database_url)
    env = {"DATABASE_URL": empty_database_url}
    with serving(tmp_path, WEB_CONCURRENCY="4", GUNICORN_THREADS="4", **env) as (base_url, _):
        cursor = requests.get(f"{base_url}/api/changes?cursor=latest").json()["next_cursor"]
        stop, failures, writes = threading.Event(), [], []
        writers = [
            threading.Thread(target=writer, args=(base_url, stop, ids, failures, writes))
            for _ in range(WRITERS)
        ]
        for thread in writers:
            thread.start()
        try:
            answer = requests.post(
                f"{base_url}/api/sessions/bulk",
                json={"filter": {"agent_id": "bulk"}, "set": {"status": "failed"}, "limit": 5000},
                timeout=60,
            )
            writes_during = len(writes)
        finally:
            stop.set()
            for thread in writers:
                thread.join()

        assert failures == []
        assert writes_during > 0, "the writers wrote while the bulk change ran"
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "matched": SESSIONS,
            "changed": SESSIONS,
            "skipped": {"conflict": 0},
            "remaining": 0,
            "dry_run": False,
        }
        counted = requests.get(f"{base_url}/api/sessions/count?agent_id=bulk").json()
        assert counted["by_status"]["failed"] == SESSIONS
        moves = Counter(
            change["session_id"]
            for change in feed_after(base_url, cursor, agent_id="bulk", type="session.updated")
            if "status" in change["changed"]
        )
        assert set(moves) == set(ids)
        assert set(moves.values()) == {1}
