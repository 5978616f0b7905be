"""The session endpoints: one blueprint, each view load → act → dump."""

from functools import partial

from flask import Blueprint, current_app, request, url_for
from werkzeug.routing import BaseConverter

from . import bulk, feed, idempotency
from .conditional import (
    ETAG,
    IDEMPOTENCY_KEY,
    IF_MATCH,
    IF_NONE_MATCH,
    check_if_none_match,
    etag,
    header_tags,
)
from .feed import kinds, stream
from .ids import SESSION_ID_PATTERN
from .models import Message, Session
from .operations import describe
from .paging import cut_page, session_cursor
from .parsing import load_json, load_query, read_json
from .schemas import (
    bulk_change_schema,
    bulk_result_schema,
    change_list_query_schema,
    change_list_schema,
    dump_bulk_result,
    dump_change,
    dump_change_list,
    dump_message_list,
    dump_message_receipt,
    dump_session,
    dump_session_count,
    dump_session_list,
    message_create_schema,
    message_list_query_schema,
    message_list_schema,
    message_receipt_schema,
    no_query_schema,
    session_count_query_schema,
    session_count_schema,
    session_create_schema,
    session_list_query_schema,
    session_list_schema,
    session_schema,
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
@describe(
    "List sessions, newest first",
    "Filter by agent, task or status (several statuses separated by commas) and "
    "by time windows on `created_at` and `last_active` (`…_after` exclusive, "
    "`…_before` inclusive); sort by `created_at` or `last_active`, `desc` or "
    "`asc`. Pages hold `limit` sessions; pass `next_cursor` back as `cursor` "
    "(with the same sort and order) for the next page, until it is null.",
    query=session_list_query_schema,
    response=session_list_schema,
    errors=(400, 422, 503),
)
def list_sessions():
    query = load_query(session_list_query_schema)
    rows = Session.page(**query)
    cursor_of = partial(session_cursor, query["sort"], query["order"])
    sessions, next_cursor = cut_page(rows, query["limit"], cursor_of)
    return dump_session_list({"sessions": sessions, "next_cursor": next_cursor})


@bp.get("/sessions/count")
@describe(
    "Count sessions, in total and by status",
    "Takes the filters of the list (not its paging or order); every status "
    "is in `by_status`, with 0 when none matches.",
    query=session_count_query_schema,
    response=session_count_schema,
    errors=(400, 422, 503),
)
def count_sessions():
    by_status = Session.count_by_status(**load_query(session_count_query_schema))
    return dump_session_count({"count": sum(by_status.values()), "by_status": by_status})


@bp.post("/sessions")
@describe(
    "Start a session",
    "Creates a session in status `created` with no messages; `Location` gives its URL.",
    status=201,
    body=session_create_schema,
    response=session_schema,
    errors=(400, 409, 413, 415, 422, 503),
    headers=(IDEMPOTENCY_KEY,),
    tagged=True,
    links=("get_session", "update_session", "delete_session", "send_message", "list_messages"),
)
def create_session():
    load_query(no_query_schema)
    key = idempotency.load_key()
    body = read_json()
    fields = session_create_schema.load(body)
    return idempotency.once(key, body, lambda: _created(Session.open(**fields)))


@bp.post("/sessions/bulk")
@describe(
    "Change many sessions at once: set a status or delete, by filter",
    "Applies to at most `limit` sessions matching `filter` (the list's filters; "
    '`{"all": true}` for every session), oldest first, each changed exactly as its '
    "own PATCH or DELETE would be, in batches of at most 100 sessions. For a status, "
    "only sessions that may move to it are matched; one whose move the status table "
    "forbids by the time it is changed is skipped (`skipped.conflict`). `dry_run` "
    "changes nothing and adds `by_status`. Repeat the request until `remaining` is 0.",
    body=bulk_change_schema,
    response=bulk_result_schema,
    errors=(400, 409, 413, 415, 422, 503),
    headers=(IDEMPOTENCY_KEY,),
)
def bulk_change():
    load_query(no_query_schema)
    key = idempotency.load_key()
    body = read_json()
    change = bulk_change_schema.load(body)
    return idempotency.once_in_steps(key, body, lambda: _bulk(change))


def _bulk(change):
    result = bulk.apply(
        {name: value for name, value in change["filter"].items() if name != "all"},
        status=change.get("set", {}).get("status"),
        delete=change.get("delete", False),
        dry_run=change["dry_run"],
        limit=change["limit"],
    )
    return dump_bulk_result(result), 200


def _created(session):
    location = url_for(".get_session", session_id=session["id"])
    return _dump_with_tag(session, 201, Location=location)


@bp.get("/sessions/<session_id:session_id>")
@describe(
    "Get a session",
    "Returns the session with its prompt, data and message count; 304 without a "
    "body when `If-None-Match` names its current tag.",
    response=session_schema,
    errors=(304, 400, 404, 422, 503),
    headers=(IF_NONE_MATCH,),
    tagged=True,
)
def get_session(session_id):
    load_query(no_query_schema)
    if_none_match = header_tags(IF_NONE_MATCH, request.headers.get(IF_NONE_MATCH))
    if if_none_match is not None:
        # The version alone decides a 304: no data read, parsed or dumped.
        check_if_none_match(if_none_match, Session.version_of(session_id))
    return _dump_with_tag(Session.fetch(session_id))


@bp.patch("/sessions/<session_id:session_id>")
@describe(
    "Change a session's status, prompt or data",
    "`data` is merged as a JSON Merge Patch (RFC 7396): a key set to null is "
    "removed. The status may move from created to any other, between active "
    "and paused, and to completed or failed; completed and failed are final "
    "(409). An empty object changes nothing. With `If-Match`, only if it names "
    "the current tag (else 412).",
    body=session_update_schema,
    response=session_schema,
    errors=(400, 404, 409, 412, 413, 415, 422, 503),
    headers=(IF_MATCH,),
    tagged=True,
)
def update_session(session_id):
    load_query(no_query_schema)
    if_match = header_tags(IF_MATCH, request.headers.get(IF_MATCH))
    patch = load_json(session_update_schema)
    return _dump_with_tag(Session.change(session_id, patch, if_match))


@bp.delete("/sessions/<session_id:session_id>")
@describe(
    "Delete a session and its messages",
    "A second delete of the same session is a 404. With `If-Match`, only if it "
    "names the current tag (else 412).",
    status=204,
    errors=(400, 404, 412, 422, 503),
    headers=(IF_MATCH,),
)
def delete_session(session_id):
    load_query(no_query_schema)
    Session.remove(session_id, header_tags(IF_MATCH, request.headers.get(IF_MATCH)))
    return _no_content()


@bp.post("/sessions/<session_id:session_id>/message")
@bp.post("/sessions/<session_id:session_id>/messages")
@describe(
    "Send a message to a session",
    "Stores the message and counts it on the session; a `created` session "
    "becomes `active`. A completed or failed session takes no messages (409).",
    status=201,
    body=message_create_schema,
    response=message_receipt_schema,
    errors=(400, 404, 409, 413, 415, 422, 503),
    headers=(IDEMPOTENCY_KEY,),
    aliases={"/messages": "send_message_to_messages"},
)
def send_message(session_id):
    load_query(no_query_schema)
    key = idempotency.load_key()
    body = read_json()
    fields = message_create_schema.load(body)
    return idempotency.once(key, body, lambda: _sent(Message.send(session_id, **fields)))


def _sent(message):
    return dump_message_receipt(message), 201


def _dump_with_tag(session, status=200, **headers):
    """Dump a full session with its ETag."""
    return dump_session(session), status, {ETAG: etag(session["version"]), **headers}


def _no_content():
    response = current_app.response_class(status=204)
    del response.headers["Content-Type"]
    return response


@bp.get("/sessions/<session_id:session_id>/messages")
@describe(
    "List a session's messages, oldest first",
    "`order=desc` lists them newest first. Pages hold `limit` messages; pass "
    "`next_cursor` back as `cursor` (with the same order) for the next page, "
    "until it is null.",
    query=message_list_query_schema,
    response=message_list_schema,
    errors=(400, 404, 422, 503),
)
def list_messages(session_id):
    query = load_query(message_list_query_schema)
    cursor, limit, order, wait = (query.get(k) for k in ("cursor", "limit", "order", "wait"))
    rows = feed.wait_for_session(
        session_id,
        lambda: Message.page(session_id, limit, cursor, order),
        wait,
        feed.client_gone(request.environ),
    )
    messages, next_cursor = cut_page(rows, limit, lambda row: str(row["seq"]))
    if wait is not None and next_cursor is None:
        # Tailing a conversation: continue after the last message seen.
        next_cursor = str(messages[-1]["seq"] if messages else cursor or 0)
    return dump_message_list({"messages": messages, "next_cursor": next_cursor})


@bp.get("/changes")
@describe(
    "Follow the change feed: every create, update, message and delete",
    "Changes come oldest first, each once, in `seq` order. Pass `next_cursor` back "
    "as `cursor` (it is never null); `cursor=latest` starts from now. With `wait`, "
    "an empty page waits up to that many seconds for a matching change (long poll). "
    "With `Accept: text/event-stream` the answer is a stream of server-sent events "
    "(`id` the seq, `event` the type, `data` the change), resumed from "
    "`Last-Event-ID`. A cursor from before the changes kept is a 410.",
    query=change_list_query_schema,
    response=change_list_schema,
    errors=(400, 410, 422, 503),
    tag="changes",
    streams=True,
)
def list_changes():
    query = load_query(change_list_query_schema)
    if stream.wanted(request.accept_mimetypes):
        return _change_stream(query)
    changes, next_position = feed.read(**query, gone=feed.client_gone(request.environ))
    return dump_change_list({"changes": changes, "next_cursor": str(next_position)})


def _change_stream(query):
    config = current_app.config
    last_event_id = stream.event_id(request.headers.get(stream.LAST_EVENT_ID))
    # A stream has no pages and never times out: limit and wait do not apply.
    del query["limit"], query["wait"]
    cursor = query.pop("cursor", kinds.LATEST)
    follower = feed.Follower(
        cursor if last_event_id is None else last_event_id,
        heartbeat=config["STREAM_HEARTBEAT_SECONDS"],
        max_seconds=config["STREAM_MAX_SECONDS"],
        name="cursor" if last_event_id is None else stream.LAST_EVENT_ID,
        gone=feed.client_gone(request.environ),
        **query,
    )
    return stream.response(
        follower,
        lambda change: (change["seq"], change["type"], dump_change(change)),
        until=follower.end,
        environ=request.environ,
        response_class=current_app.response_class,
    )
