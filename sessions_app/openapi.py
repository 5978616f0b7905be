"""The API's OpenAPI 3.1 description, generated from the marshmallow schemas.

Each route of the app has an entry in ``OPERATIONS`` saying, in the user's
words, what it does, which schemas it reads and writes, and which errors it
can answer; apispec turns the schemas into JSON Schema.  The document is
built once per app and served at ``/api/openapi.json``; ``/api/docs`` shows
it with Swagger UI, served from the ``flask-swagger-ui`` package (no CDN).
"""

import re
from dataclasses import dataclass, field, replace

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, current_app
from flask_swagger_ui import get_swaggerui_blueprint
from marshmallow import fields as ma_fields
from marshmallow import validate

from . import auth, conditional, containment, idempotency, jsonio, schemas
from .fields import (
    MAX_JSON_DEPTH,
    CommaList,
    DataFilterField,
    FeedCursor,
    JSONBoolean,
    JSONObject,
    NotBlank,
    QueryTimestamp,
    Text,
    Timestamp,
)
from .ids import SESSION_ID_PATTERN
from .parsing import load_query

TITLE = "Session API"
VERSION = "1.0.0"
DOCUMENT_PATH = "/api/openapi.json"
DOCS_PATH = "/api/docs"

DESCRIPTION = f"""\
Create, find, steer and message AI-agent sessions.

Requests and responses are JSON. Bodies of POST and PATCH must be sent with
`Content-Type: application/json`. Every error is an RFC 9457 problem document
(`application/problem+json`); a 422 adds `errors`, naming every bad field.

Text (fields, query parameters, and any key or string inside `data`) must not
contain NUL (U+0000) or unpaired surrogates. `data` may nest at most
{MAX_JSON_DEPTH} levels deep, and its integers must fit in 64 bits.

An unknown query parameter is a 422 on every `/api` endpoint. A method that a
path does not support is a 405 with an `Allow` header listing those it does.

**Tokens scoped to agents.** A token of the tokens file may be limited to some
agents: it then lists, counts and follows (`/api/changes`) only their
sessions, and any other session answers the 404 of a session that does not
exist. Creating a session for another agent is a 403 naming `agent_id`.

**Safe retries.** A create or a message sent with an `Idempotency-Key` header
happens once: sent again with the same key and the same body, it gets the
first answer again (with `Idempotent-Replayed: true`) and changes nothing. The
same key with another body is a 422; while the first request with a key is
still being handled, another is a 409. Keys are kept at least a day.

**Versions.** A session's `version` goes up by one with every change; its
`ETag` is the version in quotes. `GET` with `If-None-Match` naming it is a 304;
`PATCH` or `DELETE` with an `If-Match` that does not name it is a 412 and
changes nothing.
"""

# -- what each route does ---------------------------------------------------


@dataclass
class Operation:
    """What a route does and what it reads, returns and refuses."""

    operation_id: str
    summary: str
    description: str
    status: int
    response: type | None = None
    query: type | None = None
    body: type | None = None
    errors: tuple = ()
    tag: str = "sessions"
    links: dict = field(default_factory=dict)
    media_type: str = "application/json"
    #: Header parameters it reads, by their names in ``HEADER_PARAMETERS``.
    headers: tuple = ()
    #: Its success answers with the session's ``ETag``.
    tagged: bool = False
    #: Also answers ``text/event-stream`` (server-sent events) when asked for it.
    streams: bool = False


_SESSION_LINKS = {
    "GetSession": "get_session",
    "UpdateSession": "update_session",
    "DeleteSession": "delete_session",
    "SendMessage": "send_message",
    "ListMessages": "list_messages",
}

SEND_MESSAGE = Operation(
    "send_message",
    "Send a message to a session",
    "Stores the message and counts it on the session; a `created` session "
    "becomes `active`. A completed or failed session takes no messages (409).",
    201,
    schemas.MessageReceiptSchema,
    body=schemas.MessageCreateSchema,
    errors=(400, 404, 409, 413, 415, 422, 503),
    headers=("IdempotencyKey",),
)

OPERATIONS = {
    ("GET", "/api/sessions"): Operation(
        "list_sessions",
        "List sessions, newest first",
        "Filter by agent, task or status (several statuses separated by commas) and "
        "by time windows on `created_at` and `last_active` (`…_after` exclusive, "
        "`…_before` inclusive); sort by `created_at` or `last_active`, `desc` or "
        "`asc`. Pages hold `limit` sessions; pass `next_cursor` back as `cursor` "
        "(with the same sort and order) for the next page, until it is null.",
        200,
        schemas.SessionListSchema,
        query=schemas.SessionListQuerySchema,
        errors=(400, 422, 503),
    ),
    ("GET", "/api/sessions/count"): Operation(
        "count_sessions",
        "Count sessions, in total and by status",
        "Takes the filters of the list (not its paging or order); every status "
        "is in `by_status`, with 0 when none matches.",
        200,
        schemas.SessionCountSchema,
        query=schemas.SessionFilterQuerySchema,
        errors=(400, 422, 503),
    ),
    ("POST", "/api/sessions"): Operation(
        "create_session",
        "Start a session",
        "Creates a session in status `created` with no messages; `Location` gives its URL.",
        201,
        schemas.SessionSchema,
        body=schemas.SessionCreateSchema,
        errors=(400, 409, 413, 415, 422, 503),
        links=_SESSION_LINKS,
        headers=("IdempotencyKey",),
        tagged=True,
    ),
    ("POST", "/api/sessions/bulk"): Operation(
        "bulk_change",
        "Change many sessions at once: set a status or delete, by filter",
        "Applies to at most `limit` sessions matching `filter` (the list's filters; "
        '`{"all": true}` for every session), oldest first, each changed exactly as its '
        "own PATCH or DELETE would be, in batches of at most 100 sessions. For a status, "
        "only sessions that may move to it are matched; one whose move the status table "
        "forbids by the time it is changed is skipped (`skipped.conflict`). `dry_run` "
        "changes nothing and adds `by_status`. Repeat the request until `remaining` is 0.",
        200,
        schemas.BulkResultSchema,
        body=schemas.BulkChangeSchema,
        errors=(400, 409, 413, 415, 422, 503),
        headers=("IdempotencyKey",),
    ),
    ("GET", "/api/sessions/{session_id}"): Operation(
        "get_session",
        "Get a session",
        "Returns the session with its prompt, data and message count; 304 without a "
        "body when `If-None-Match` names its current tag.",
        200,
        schemas.SessionSchema,
        errors=(304, 400, 404, 422, 503),
        headers=("IfNoneMatch",),
        tagged=True,
    ),
    ("PATCH", "/api/sessions/{session_id}"): Operation(
        "update_session",
        "Change a session's status, prompt or data",
        "`data` is merged as a JSON Merge Patch (RFC 7396): a key set to null is "
        "removed. The status may move from created to any other, between active "
        "and paused, and to completed or failed; completed and failed are final "
        "(409). An empty object changes nothing. With `If-Match`, only if it names "
        "the current tag (else 412).",
        200,
        schemas.SessionSchema,
        body=schemas.SessionUpdateSchema,
        errors=(400, 404, 409, 412, 413, 415, 422, 503),
        headers=("IfMatch",),
        tagged=True,
    ),
    ("DELETE", "/api/sessions/{session_id}"): Operation(
        "delete_session",
        "Delete a session and its messages",
        "A second delete of the same session is a 404. With `If-Match`, only if it "
        "names the current tag (else 412).",
        204,
        errors=(400, 404, 412, 422, 503),
        headers=("IfMatch",),
    ),
    ("POST", "/api/sessions/{session_id}/message"): SEND_MESSAGE,
    ("POST", "/api/sessions/{session_id}/messages"): replace(
        SEND_MESSAGE,
        operation_id="send_message_to_messages",
        summary="Send a message to a session (same as POST …/message)",
        description="The same operation as `POST /api/sessions/{session_id}/message`.",
    ),
    ("GET", "/api/sessions/{session_id}/messages"): Operation(
        "list_messages",
        "List a session's messages, oldest first",
        "`order=desc` lists them newest first. Pages hold `limit` messages; pass "
        "`next_cursor` back as `cursor` (with the same order) for the next page, "
        "until it is null.",
        200,
        schemas.MessageListSchema,
        query=schemas.MessageListQuerySchema,
        errors=(400, 404, 422, 503),
    ),
    ("GET", "/api/changes"): Operation(
        "list_changes",
        "Follow the change feed: every create, update, message and delete",
        "Changes come oldest first, each once, in `seq` order. Pass `next_cursor` back "
        "as `cursor` (it is never null); `cursor=latest` starts from now. With `wait`, "
        "an empty page waits up to that many seconds for a matching change (long poll). "
        "With `Accept: text/event-stream` the answer is a stream of server-sent events "
        "(`id` the seq, `event` the type, `data` the change), resumed from "
        "`Last-Event-ID`. A cursor from before the changes kept is a 410.",
        200,
        schemas.ChangeListSchema,
        query=schemas.ChangeListQuerySchema,
        errors=(400, 410, 422, 503),
        tag="changes",
        streams=True,
    ),
    ("GET", "/health"): Operation(
        "health",
        "Check the service and its database",
        "200 when the database answers, else a 503 problem.",
        200,
        schemas.HealthSchema,
        errors=(503,),
        tag="service",
    ),
    ("GET", "/metrics"): Operation(
        "metrics",
        "Service metrics for Prometheus",
        "Request counts and latencies by route and status, in Prometheus' text format.",
        200,
        errors=(503,),
        tag="service",
        media_type="text/plain",
    ),
    ("GET", DOCUMENT_PATH): Operation(
        "openapi_document",
        "This API description (OpenAPI 3.1)",
        "Generate a client from it, or browse it at `/api/docs/`.",
        200,
        errors=(400, 422, 503),
        tag="service",
    ),
    ("GET", DOCS_PATH + "/"): Operation(
        "api_docs",
        "Interactive documentation (Swagger UI)",
        "Try every operation from the browser; works without internet access.",
        200,
        errors=(400, 422, 503),
        tag="service",
        media_type="text/html",
    ),
}

#: Every schema of a response body, by its name in the document.
OUT_SCHEMAS = {
    "SessionSummary": schemas.SessionSummarySchema,
    "Session": schemas.SessionSchema,
    "SessionList": schemas.SessionListSchema,
    "SessionCount": schemas.SessionCountSchema,
    "BulkResult": schemas.BulkResultSchema,
    "MessageReceipt": schemas.MessageReceiptSchema,
    "Message": schemas.MessageSchema,
    "MessageList": schemas.MessageListSchema,
    "Change": schemas.ChangeSchema,
    "ChangeList": schemas.ChangeListSchema,
    "Health": schemas.HealthSchema,
}

# -- error responses --------------------------------------------------------

ERRORS = {
    304: ("NotModified", "`If-None-Match` names the current tag: the client's copy is current."),
    400: (
        "BadRequest",
        "The body is not a JSON object, the query string is not UTF-8, or `If-Match` / "
        "`If-None-Match` is malformed.",
    ),
    401: ("Unauthorized", "No bearer token was sent, or it is not one the service knows."),
    403: (
        "Forbidden",
        "The token may only read; it cannot change anything. On a create, also: the token "
        "is scoped to agents and `agent_id` is not one of them (`errors` names `agent_id`).",
    ),
    404: ("NotFound", "No session has this id."),
    405: ("MethodNotAllowed", "The path does not take this method; `Allow` lists those it does."),
    409: (
        "Conflict",
        "The session's status forbids this (`detail` names it), or a request with this "
        "`Idempotency-Key` is still being handled.",
    ),
    410: (
        "Gone",
        "Changes after this cursor are no longer kept: list the sessions again, "
        "then continue from `cursor=latest`.",
    ),
    412: (
        "PreconditionFailed",
        "`If-Match` does not name the session's current tag; `detail` gives its version.",
    ),
    413: ("ContentTooLarge", "The body is larger than the service accepts (1 MiB by default)."),
    415: ("UnsupportedMediaType", "The body was not sent as `application/json`."),
    422: (
        "UnprocessableContent",
        "Invalid or unknown fields or parameters, or an `Idempotency-Key` that is malformed "
        "or was used for a different request; `errors` names each.",
    ),
    503: (
        "ServiceUnavailable",
        "The database cannot be reached, or no more waiting requests can be held; "
        "retry after Retry-After seconds.",
    ),
}

_ETAG = {
    "description": "The session's version, in quotes: a strong entity tag.",
    "required": True,
    "schema": {"type": "string", "pattern": conditional.ETAG_PATTERN},
}

_HEADERS = {
    304: {conditional.ETAG: _ETAG},
    401: {
        "WWW-Authenticate": {
            "description": "The scheme to use: Bearer.",
            "required": True,
            "schema": {"type": "string"},
        }
    },
    405: {"Allow": {"description": "The methods this path takes.", "schema": {"type": "string"}}},
    503: {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "integer", "minimum": 0},
        }
    },
}

#: The request headers of contract sections 5 and 6, as OpenAPI parameters.
HEADER_PARAMETERS = {
    "IdempotencyKey": {
        "name": conditional.IDEMPOTENCY_KEY,
        "description": "Makes a retry of this request safe: sent again with the same key and "
        "body, it gets the first answer and changes nothing. Kept at least "
        "IDEMPOTENCY_TTL_SECONDS (a day by default).",
        "schema": {"type": "string", "pattern": idempotency.KEY_PATTERN},
        "example": "create-order-42-attempt",
    },
    "IfMatch": {
        "name": conditional.IF_MATCH,
        "description": 'Only if the session\'s tag is one of these (e.g. "3"; * for any): '
        "else 412. Weak tags never match.",
        "schema": {"type": "string", "pattern": conditional.TAGS_PATTERN},
        "example": '"1"',
    },
    "IfNoneMatch": {
        "name": conditional.IF_NONE_MATCH,
        "description": 'A 304 without a body if the session\'s tag is one of these (e.g. "3", '
        'W/"3"; * for any).',
        "schema": {"type": "string", "pattern": conditional.TAGS_PATTERN},
        "example": '"1"',
    },
}

_REPLAYED = {
    "description": "`true` when this is the stored answer to an earlier request with the "
    "same `Idempotency-Key`.",
    "schema": {"type": "string", "enum": ["true"]},
}

# -- custom fields as JSON Schema ------------------------------------------

NO_NUL = "^[^\\u0000]*$"
NOT_BLANK = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"
_INT64 = {"minimum": -(2**63), "maximum": 2**63 - 1}
# Any JSON value, with each keyword applying to its own type only (JSON
# Schema's rule), so client generators see one plain "any" value; a union
# with a recursive branch is more than some of them can read.
JSON_VALUE = {
    "description": "Any JSON value that every database can store unchanged.",
    "pattern": NO_NUL,
    "if": {"type": "integer"},
    "then": _INT64,
    "items": {"$ref": "#/components/schemas/JSONValue"},
    "propertyNames": {"pattern": NO_NUL},
    "additionalProperties": {"$ref": "#/components/schemas/JSONValue"},
}


def _custom_field_properties(self, field, **kwargs):
    """Describe this project's fields in JSON Schema (an apispec attribute function)."""
    if isinstance(field, Text) and "pattern" not in kwargs["ret"]:
        blank = any(isinstance(v, NotBlank) for v in field.validators)
        return {"pattern": NOT_BLANK if blank else NO_NUL}
    if isinstance(field, FeedCursor):
        return {"type": "string", "pattern": f"^({field.latest}|0|[1-9][0-9]{{0,17}})$"}
    if isinstance(field, CommaList):
        choice = "|".join(re.escape(c) for c in field.choices)
        return {"pattern": f"^({choice})(,({choice}))*$"}
    if isinstance(field, JSONObject):
        return {
            "propertyNames": {"pattern": NO_NUL},
            "additionalProperties": {"$ref": "#/components/schemas/JSONValue"},
            "description": (
                f"{field.metadata.get('description', 'A JSON object.')} No NUL or unpaired "
                f"surrogates in any key or string, integers within 64 bits, nesting at "
                f"most {MAX_JSON_DEPTH} levels."
            ),
        }
    if isinstance(field, DataFilterField):
        if field.in_body:
            return dict(_DATA_OBJECT)
        return {"type": "string", "maxLength": containment.MAX_LENGTH}
    if isinstance(field, JSONBoolean) and any(
        isinstance(v, validate.Equal) for v in field.validators
    ):
        return {"const": True}
    if isinstance(field, ma_fields.Constant):
        return {"const": field.constant}
    return {}


# -- building the document ---------------------------------------------------


def build_document(app):
    """Return the OpenAPI document for ``app``'s routes and its token rules."""
    routes = routes_of(app.url_map)
    plugin = MarshmallowPlugin()
    spec = APISpec(TITLE, VERSION, "3.1.0", plugins=[plugin], info={"description": DESCRIPTION})
    plugin.map_to_openapi_type(Timestamp, "string", "date-time")
    plugin.map_to_openapi_type(QueryTimestamp, "string", "date-time")
    plugin.converter.add_attribute_function(_custom_field_properties)
    _add_components(spec)
    if auth.required(app):
        spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    paths = {}
    for (method, path), operation in OPERATIONS.items():
        if (method, path) in routes:
            document = _operation(operation)
            if auth.needs_token(app, path):
                _require_token(document, method)
            paths.setdefault(path, {})[method.lower()] = document
    for path, operations in paths.items():
        parameters = ["SessionId"] if "{session_id}" in path else []
        spec.path(path, operations=operations, parameters=parameters)
    return _what_fields_cannot_say(spec.to_dict())


_DATA_OBJECT = {
    "type": "object",
    "propertyNames": {"pattern": NO_NUL},
    "additionalProperties": {"$ref": "#/components/schemas/JSONValue"},
}


def _what_fields_cannot_say(document):
    """Add what the schemas' fields cannot state: a JSON query value, one of two members."""
    for methods in document["paths"].values():
        for method, operation in methods.items():
            if method == "parameters":
                continue
            for parameter in operation.get("parameters", ()):
                if parameter.get("in") == "query" and parameter.get("name") == "data":
                    # A JSON object sent as a query value (URL-encoded).
                    del parameter["schema"]
                    parameter["content"] = {"application/json": {"schema": _DATA_OBJECT}}
    components = document["components"]["schemas"]
    components["BulkChange"]["oneOf"] = [{"required": ["set"]}, {"required": ["delete"]}]
    components["BulkFilter"]["minProperties"] = 1
    return document


def routes_of(url_map):
    """Return the (method, path) pairs of ``url_map``'s operations, in OpenAPI form."""
    found = set()
    for rule in url_map.iter_rules():
        if rule.endpoint == "static" or (
            rule.endpoint.startswith("swagger_ui.") and rule.rule != DOCS_PATH + "/"
        ):
            continue  # files, not operations
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        found.update((method, path) for method in rule.methods - {"HEAD", "OPTIONS"})
    return found


def _require_token(document, method):
    document["security"] = [{"bearer": []}]
    document["responses"]["401"] = ERRORS[401][0]
    if method != "GET":
        document["responses"]["403"] = ERRORS[403][0]


def _add_components(spec):
    spec.components.schema("JSONValue", JSON_VALUE)
    for name, schema in OUT_SCHEMAS.items():
        spec.components.schema(name, schema=schema)
        # A response always carries every field of its schema (null where
        # allowed), but those that only some kinds of change carry.
        spec.components.schemas[name]["required"] = [
            key for key, f in schema().fields.items() if "only_in" not in f.metadata
        ]
    spec.components.schema("Problem", schema=schemas.ProblemSchema)
    spec.components.schema("ValidationProblem", schema=schemas.ValidationProblemSchema)
    spec.components.parameter(
        "SessionId",
        "path",
        {
            "name": "session_id",
            "description": "The session's id, as returned when it was created.",
            "schema": {"type": "string", "pattern": f"^{SESSION_ID_PATTERN}$"},
        },
    )
    for name, parameter in HEADER_PARAMETERS.items():
        spec.components.parameter(name, "header", parameter)
    for status, (name, description) in ERRORS.items():
        problem = "ValidationProblem" if status == 422 else "Problem"
        response = {"description": description}
        if status != 304:
            response["content"] = {"application/problem+json": {"schema": problem}}
        if status in _HEADERS:
            response["headers"] = _HEADERS[status]
        spec.components.response(name, response)


def _operation(op):
    success = {"description": op.summary}
    if op.response is not None:
        success["content"] = {op.media_type: {"schema": op.response}}
        if op.streams:
            success["content"]["text/event-stream"] = {
                "schema": {"type": "string", "description": "Server-sent events."}
            }
    elif op.status != 204:
        kind = "object" if op.media_type == "application/json" else "string"
        success["content"] = {op.media_type: {"schema": {"type": kind}}}
    headers = {}
    if op.tagged:
        headers[conditional.ETAG] = _ETAG
    if "IdempotencyKey" in op.headers:
        headers[conditional.IDEMPOTENT_REPLAYED] = _REPLAYED
    if op.links:
        headers["Location"] = {
            "description": "The new session's URL.",
            "required": True,
            "schema": {"type": "string"},
        }
        success["links"] = {
            name: {
                "operationId": target,
                "parameters": {"session_id": "$response.body#/id"},
            }
            for name, target in op.links.items()
        }
    if headers:
        success["headers"] = headers
    responses = {str(op.status): success}
    responses.update({str(status): ERRORS[status][0] for status in op.errors})
    result = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "description": op.description,
        "tags": [op.tag],
        "responses": responses,
    }
    parameters = [{"in": "query", "schema": op.query}] if op.query is not None else []
    parameters += list(op.headers)  # names of components: apispec makes them $refs
    if parameters:
        result["parameters"] = parameters
    if op.body is not None:
        result["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": op.body}},
        }
    return result


# -- serving it ---------------------------------------------------------------

bp = Blueprint("openapi", __name__)


@bp.get(DOCUMENT_PATH)
def openapi_document():
    load_query(schemas.no_query_schema)
    return current_app.response_class(
        current_app.extensions["openapi"], mimetype="application/json"
    )


def _reject_query():
    load_query(schemas.no_query_schema)


def init_app(app):
    """Serve the document and the docs; call after every other blueprint is registered."""
    docs = get_swaggerui_blueprint(DOCS_PATH, DOCUMENT_PATH, config={"app_name": TITLE})
    docs.before_request(_reject_query)
    app.register_blueprint(bp)
    app.register_blueprint(docs)
    # No data here, and a browser opening the docs cannot send a token.
    auth.leave_open(app, DOCUMENT_PATH)
    auth.leave_open(app, DOCS_PATH)
    app.extensions["openapi"] = jsonio.dumps(build_document(app))
