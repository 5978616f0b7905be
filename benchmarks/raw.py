"""The write ceiling: Flask on the database driver, doing a write's work in raw SQL.

A create stores the session and records its ``session.created`` change; a
message counts itself on its session (``message_count``, ``version``,
``last_active``, the first message's move to ``active``), stores the message
and records its ``message.created`` change: each in one transaction, synced
as the service's are, with the change in the service's own tables.  The feed
keeps the service's guarantee (every reader sees changes in seq order, each
once): on SQLite writers take turns (``BEGIN IMMEDIATE``); on PostgreSQL the
change is appended under one advisory lock held to COMMIT, the simplest raw
SQL that keeps it.  No validation beyond what the SQL needs, no ORM, no
schemas: what is left of the service's time is its own code.

Serve it like the service, on a database the service has migrated:
``gunicorn -c gunicorn.conf.py benchmarks.raw:app``.
"""

import os
import sqlite3
import threading
import time

import orjson
from flask import Flask, request

# The service's own ids (a pure helper), so the service lists these sessions too.
from sessions_app.ids import new_message_id, new_session_id

app = Flask(__name__)
URL = os.environ.get("DATABASE_URL", "sqlite:///var/sessions.sqlite3")
POSTGRES = URL.startswith("postgres")
P = "%s" if POSTGRES else "?"
LOCK = 0x5E55_FEED
CHANGE_COLUMNS = "type, session_id, agent_id, task_id, status, version, at, message_id, role"
_local = threading.local()


def connection():
    """Return this thread's connection, opened on first use."""
    conn = getattr(_local, "conn", None)
    if conn is None:
        if POSTGRES:
            import psycopg

            conn = psycopg.connect(URL)
        else:
            conn = sqlite3.connect(
                URL.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False
            )
            for pragma in ("journal_mode=wal", "synchronous=full", "busy_timeout=10000"):
                conn.execute(f"PRAGMA {pragma}")
        _local.conn = conn
    return conn


def _now_us():
    return time.time_ns() // 1000


def _json(obj, status):
    return app.response_class(orjson.dumps(obj), status=status, mimetype="application/json")


def _append_change(cursor, values):
    slots = ", ".join([P] * 9)
    if POSTGRES:
        cursor.execute(
            f"INSERT INTO changes ({CHANGE_COLUMNS}) SELECT {slots} "
            f"FROM (SELECT pg_advisory_xact_lock({LOCK})) AS turn",
            values,
        )
    else:
        cursor.execute(f"INSERT INTO changes ({CHANGE_COLUMNS}) VALUES ({slots})", values)


def _transaction(conn):
    return conn.transaction() if POSTGRES else _SqliteTransaction(conn)


class _SqliteTransaction:
    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, *rest):
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")


@app.get("/health")
def health():
    return _json({"status": "ok"}, 200)


@app.post("/api/sessions")
def create_session():
    body = orjson.loads(request.get_data())
    now = _now_us()
    session = {
        "id": new_session_id(now),
        "agent_id": body["agent_id"],
        "task_id": body.get("task_id"),
        "status": "created",
        "prompt": body.get("prompt"),
        "data": body.get("data", {}),
        "created_at": now,
        "last_active": now,
        "status_changed_at": now,
        "message_count": 0,
        "version": 1,
    }
    conn = connection()
    with _transaction(conn):
        cursor = conn.cursor()
        cursor.execute(
            "INSERT INTO sessions (id, agent_id, task_id, status, prompt, data, created_at, "
            f"last_active, status_changed_at, message_count, version) VALUES "
            f"({', '.join([P] * 11)})",
            (
                session["id"],
                session["agent_id"],
                session["task_id"],
                "created",
                session["prompt"],
                orjson.dumps(session["data"]).decode(),
                now,
                now,
                now,
                0,
                1,
            ),
        )
        _append_change(
            cursor,
            ("session.created", session["id"], session["agent_id"], session["task_id"])
            + ("created", 1, now, None, None),
        )
    return _json(session, 201)


@app.post("/api/sessions/<session_id>/message")
def send_message(session_id):
    body = orjson.loads(request.get_data())
    role = body.get("role", "user")
    now = _now_us()
    message_id = new_message_id(now)
    conn = connection()
    with _transaction(conn):
        cursor = conn.cursor()
        cursor.execute(
            "UPDATE sessions SET message_count = message_count + 1, version = version + 1, "
            f"last_active = {P}, "
            "status = CASE WHEN status = 'created' THEN 'active' ELSE status END, "
            f"status_changed_at = CASE WHEN status = 'created' THEN {P} "
            "ELSE status_changed_at END "
            f"WHERE id = {P} AND status NOT IN ('completed', 'failed') "
            "RETURNING message_count, agent_id, task_id, status, version",
            (now, now, session_id),
        )
        row = cursor.fetchone()
        if row is None:
            return _json({"status": 404}, 404)
        count, agent_id, task_id, status, version = row
        cursor.execute(
            "INSERT INTO messages (session_id, seq, message_id, role, content, timestamp) "
            f"VALUES ({', '.join([P] * 6)})",
            (session_id, count, message_id, role, body["content"], now),
        )
        _append_change(
            cursor,
            ("message.created", session_id, agent_id, task_id, status, version, now)
            + (message_id, role),
        )
    receipt = {"message_id": message_id, "session_id": session_id, "status": "sent"}
    return _json({**receipt, "timestamp": now}, 201)
