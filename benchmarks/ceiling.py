"""The ceiling: bare Flask answering the API's routes with fixed JSON, no database.

It parses what the service parses (the path, the query string, a JSON body)
and serializes answers of the same shapes with the same JSON library, so the
difference from the service is the database and the service's own code.
Serve it like the service: ``gunicorn -c gunicorn.conf.py benchmarks.ceiling:app``.
"""

import orjson
from flask import Flask, request

SESSION_ID = "session-01j9zq3v0d8x7k2m4n6p8r0t2w"
SUMMARY = {
    "id": SESSION_ID,
    "agent_id": "agent-0",
    "task_id": "task-17",
    "status": "active",
    "created_at": "2024-01-16T10:00:00.123456Z",
    "last_active": "2024-01-16T10:05:00.654321Z",
    "message_count": 3,
}
SESSION = {
    **SUMMARY,
    "prompt": "Refactor the parser module.",
    "data": {"workdir": "/src", "model": "m-1"},
}
PAGE_SIZE = 50

app = Flask(__name__)


def _json(obj, status=200):
    return app.response_class(orjson.dumps(obj), status=status, mimetype="application/json")


@app.get("/health")
def health():
    return _json({"status": "ok"})


@app.get("/api/sessions")
def list_sessions():
    limit = min(int(request.args.get("limit", 100)), PAGE_SIZE)
    sessions = [dict(SUMMARY, message_count=n) for n in range(limit)]
    return _json({"sessions": sessions, "next_cursor": SESSION_ID})


@app.post("/api/sessions")
def create_session():
    body = request.get_json()
    session = dict(SESSION, agent_id=body["agent_id"], status="created", message_count=0)
    return _json(session, 201)


@app.get("/api/sessions/<session_id>")
def get_session(session_id):
    return _json(dict(SESSION, id=session_id))


@app.post("/api/sessions/<session_id>/message")
def send_message(session_id):
    request.get_json()
    receipt = {
        "message_id": "msg-01j9zq3v0d8x7k2m4n6p8r0t2w",
        "session_id": session_id,
        "status": "sent",
        "timestamp": "2024-01-16T10:05:00.654321Z",
    }
    return _json(receipt, 201)
