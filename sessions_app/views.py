"""The session endpoints: one blueprint, each view load → act → dump."""

from flask import Blueprint, current_app, url_for
from werkzeug.routing import BaseConverter

from . import changes, feed, sse
from .ids import SESSION_ID_PATTERN
from .models import Message, Session
from .paging import cut_page
from .parsing import load_json, load_query
from .schemas import (
    change_list_query_schema,
    dump_change,
    dump_change_list,
    dump_message_list,
    dump_message_receipt,
    dump_session,
    dump_session_list,
    message_create_schema,
    message_list_query_schema,
    no_query_schema,
    session_create_schema,
    session_list_query_schema,
    session_update_schema,
)

bp = Blueprint("sessions", __name__, url_prefix="/api")


class SessionIdConverter(BaseConverter):
    """Match only well-formed session ids, so any other path is a plain 404."""

    regex = SESSION_ID_PATTERN


@bp.record_once
def _add_converter(state):
    state.app.url_map.converters["session_id"] = SessionIdConverter


@bp.get("/sessions")
def list_sessions():
    query = load_query(session_list_query_schema)
    rows = Session.page(**query)
    sessions, next_cursor = cut_page(rows, query["limit"], lambda row: row["id"])
    return dump_session_list({"sessions": sessions, "next_cursor": next_cursor})


@bp.post("/sessions")
def create_session():
    load_query(no_query_schema)
    session = Session.open(**load_json(session_create_schema))
    location = url_for(".get_session", session_id=session["id"])
    return dump_session(session), 201, {"Location": location}


@bp.get("/sessions/<session_id:session_id>")
def get_session(session_id):
    load_query(no_query_schema)
    return dump_session(Session.fetch(session_id))


@bp.patch("/sessions/<session_id:session_id>")
def update_session(session_id):
    load_query(no_query_schema)
    patch = load_json(session_update_schema)
    return dump_session(Session.change(session_id, patch))


@bp.delete("/sessions/<session_id:session_id>")
def delete_session(session_id):
    load_query(no_query_schema)
    Session.remove(session_id)
    return _no_content()


@bp.post("/sessions/<session_id:session_id>/message")
@bp.post("/sessions/<session_id:session_id>/messages")
def send_message(session_id):
    load_query(no_query_schema)
    message = Message.send(session_id, **load_json(message_create_schema))
    return dump_message_receipt(message), 201


def _no_content():
    response = current_app.response_class(status=204)
    del response.headers["Content-Type"]
    return response


@bp.get("/sessions/<session_id:session_id>/messages")
def list_messages(session_id):
    query = load_query(message_list_query_schema)
    after, limit, wait = query.get("cursor", 0), query["limit"], query.get("wait")
    rows = feed.wait_for_session(
        session_id, lambda: Message.page(session_id, limit, after), wait, sse.client_gone()
    )
    messages, next_cursor = cut_page(rows, limit, lambda row: str(row["seq"]))
    if wait is not None and next_cursor is None:
        # Tailing a conversation: continue after the last message seen.
        next_cursor = str(messages[-1]["seq"] if messages else after)
    return dump_message_list({"messages": messages, "next_cursor": next_cursor})


@bp.get("/changes")
def list_changes():
    query = load_query(change_list_query_schema)
    if sse.wanted():
        return _change_stream(query)
    changes, next_position = feed.read(**query, gone=sse.client_gone())
    return dump_change_list({"changes": changes, "next_cursor": str(next_position)})


def _change_stream(query):
    config = current_app.config
    last_event_id = sse.last_event_id()
    # A stream has no pages and never times out: limit and wait do not apply.
    del query["limit"], query["wait"]
    cursor = query.pop("cursor", changes.LATEST)
    follower = feed.Follower(
        cursor if last_event_id is None else last_event_id,
        heartbeat=config["STREAM_HEARTBEAT_SECONDS"],
        max_seconds=config["STREAM_MAX_SECONDS"],
        name="cursor" if last_event_id is None else sse.LAST_EVENT_ID,
        gone=sse.client_gone(),
        **query,
    )
    return sse.response(
        follower, lambda change: (change["seq"], change["type"], dump_change(change))
    )
