"""The API's OpenAPI 3.1 description, generated from the routes and their views.

Each view says what it does with ``@describe(...)`` (``operations.py``): its
summary, its In and Out schemas, its success status, its errors and the
headers it reads.  The document is built from the app's URL map and those
descriptions (a route whose view has none is an error, ``Undescribed``);
apispec turns the marshmallow schemas into JSON Schema.  It is built once
per process for each set of routes and token rules (whether the app asks for
tokens is the one part of it that depends on the configuration) and served
at ``/api/openapi.json``; ``/api/docs`` shows it with Swagger UI, served
from the ``flask-swagger-ui`` package (no CDN).

Why a decorator of our own rather than flask-smorest, apifairy or APIFlask:
each of those also loads and dumps through the schemas it is given (webargs,
its own error handlers and error bodies, its own response wrapping), which
would change every error answer and the views' load → act → dump, and each
writes the document its own way (its own error responses, components and
operation ids).  The decorator here only records what the view says; apispec,
which all of them use underneath, still writes the schemas.
"""

import functools
import re

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.common import resolve_schema_instance
from apispec.ext.marshmallow.openapi import OpenAPIConverter
from flask import Blueprint, current_app
from flask_swagger_ui import get_swaggerui_blueprint
from marshmallow import fields as ma_fields
from marshmallow import validate

from . import auth, conditional, containment, idempotency, jsonio, schemas
from .fields import (
    INT64_MAX,
    INT64_MIN,
    MAX_JSON_DEPTH,
    SEQ_PATTERN,
    CommaList,
    DataFilterField,
    FeedCursor,
    JSONBoolean,
    JSONObject,
    NotBlank,
    NumericCursor,
    QueryTimestamp,
    Text,
    Timestamp,
)
from .ids import SESSION_ID_PATTERN
from .operations import describe, described
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

#: The component name of each header parameter, by the header's name.
_HEADER_COMPONENTS = {parameter["name"]: name for name, parameter in HEADER_PARAMETERS.items()}

_REPLAYED = {
    "description": "`true` when this is the stored answer to an earlier request with the "
    "same `Idempotency-Key`.",
    "schema": {"type": "string", "enum": ["true"]},
}

# -- custom fields as JSON Schema ------------------------------------------

NO_NUL = "^[^\\u0000]*$"
NOT_BLANK = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"
# Any JSON value, with each keyword applying to its own type only (JSON
# Schema's rule), so client generators see one plain "any" value; a union
# with a recursive branch is more than some of them can read.
JSON_VALUE = {
    "description": "Any JSON value that every database can store unchanged.",
    "pattern": NO_NUL,
    "if": {"type": "integer"},
    "then": {"minimum": INT64_MIN, "maximum": INT64_MAX},
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
        return {"type": "string", "pattern": f"^({field.latest}|{SEQ_PATTERN})$"}
    if isinstance(field, NumericCursor):
        return _numeric_cursor(field, kwargs["ret"])
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


def _numeric_cursor(field, ret):
    """Declare a numeric cursor a string of digits, as the next_cursor it continues is."""
    (bounds,) = (v for v in field.validators if isinstance(v, validate.Range))
    if bounds.min != 0 or not (bounds.min_inclusive and bounds.max_inclusive):
        raise ValueError(f"A numeric cursor counts from 0 to a maximum, not {bounds}")
    ret.pop("minimum", None)
    ret.pop("maximum", None)
    return {"type": "string", "pattern": f"^{numerals_up_to(bounds.max, field.MAX_DIGITS)}$"}


def numerals_up_to(maximum, digits):
    """Return a pattern of the decimal numerals worth at most ``maximum``.

    Leading zeros are allowed, up to ``digits`` digits in all, as ``QueryInt``
    reads them; JSON Schema cannot bound a string's value, so the bound is
    spelt out digit by digit.
    """
    top = str(maximum)
    # Fewer digits than the maximum: any.
    shorter = [f"[0-9]{{1,{len(top) - 1}}}"] if len(top) > 1 else []
    # As many digits as the maximum: smaller at the first digit that differs.
    as_long = [
        top[:i] + _digits_below(top[i]) + _any_digits(len(top) - i - 1)
        for i in range(len(top))
        if top[i] != "0"
    ]
    as_long.append(top)
    padded = f"0{{0,{digits - len(top)}}}(?:{'|'.join(as_long)})"
    return f"(?:{'|'.join([*shorter, padded])})"


def _digits_below(digit):
    return {"1": "0", "2": "[01]"}.get(digit, f"[0-{int(digit) - 1}]")


def _any_digits(count):
    return {0: "", 1: "[0-9]"}.get(count, f"[0-9]{{{count}}}")


# -- building the document ---------------------------------------------------


class Undescribed(LookupError):
    """A route whose view has no ``@describe``: the document would leave it out."""


def operations(app):
    """Return ``{(method, path): Operation}`` for every route of ``app``, in OpenAPI form.

    Raise ``Undescribed`` naming every route whose view says nothing of itself.
    """
    found, endpoints, missing = {}, {}, []
    for rule in app.url_map.iter_rules():
        if _serves_files(rule):
            continue
        operation = described(app.view_functions[rule.endpoint])
        if operation is None:
            missing.append(f"{rule.rule} ({rule.endpoint})")
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found[(method, path)] = operation
            endpoints.setdefault((rule.endpoint, method), []).append(path)
    if missing:
        raise Undescribed(
            "Describe these routes' views with @describe (sessions_app/operations.py): "
            + ", ".join(missing)
        )
    for (_endpoint, method), paths in endpoints.items():
        _name_aliases(found, method, paths)
    return found


def _serves_files(rule):
    # Static files and Swagger UI's own assets are files, not operations.
    return rule.endpoint == "static" or (
        rule.endpoint == f"{_DOCS_BLUEPRINT}.show" and rule.rule != DOCS_PATH + "/"
    )


def _name_aliases(found, method, paths):
    operation = found[(method, paths[0])]
    aliases = {path: dict(operation.aliases).get(_ending(operation, path)) for path in paths}
    primary = [path for path, alias in aliases.items() if alias is None]
    if len(primary) != 1:
        raise Undescribed(
            f"{method} {' and '.join(primary)} share the view {operation.operation_id}: "
            "give all of its paths but one an operation id of their own (aliases=)"
        )
    for path, alias in aliases.items():
        if alias is not None:
            found[(method, path)] = operation.alias(alias, method, primary[0])


def _ending(operation, path):
    return next((end for end, _ in operation.aliases if path.endswith(end)), None)


def document(app):
    """Return the OpenAPI document of ``app`` as JSON bytes, built once per process.

    What it depends on is its key: the operations and, from the
    configuration, whether tokens are asked for at all and on which paths.
    """
    found = operations(app)
    secured = frozenset(key for key in found if auth.needs_token(app, key[1]))
    return _document(tuple(found.items()), auth.required(app), secured)


@functools.cache
def _document(found, tokens, secured):
    return jsonio.dumps(_build(dict(found), tokens, secured))


class _Converter(OpenAPIConverter):
    def schema2jsonschema(self, schema):
        json_schema = super().schema2jsonschema(schema)
        instance = resolve_schema_instance(schema)
        if isinstance(instance, schemas.OutSchema):
            json_schema["required"] = [
                key for key, f in instance.fields.items() if "only_in" not in f.metadata
            ]
        return json_schema


class _Plugin(MarshmallowPlugin):
    Converter = _Converter


def _build(found, tokens, secured):
    plugin = _Plugin()
    spec = APISpec(TITLE, VERSION, "3.1.0", plugins=[plugin], info={"description": DESCRIPTION})
    plugin.map_to_openapi_type(Timestamp, "string", "date-time")
    plugin.map_to_openapi_type(QueryTimestamp, "string", "date-time")
    plugin.converter.add_attribute_function(_custom_field_properties)
    _add_components(spec)
    if tokens:
        spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    paths = {}
    for (method, path), operation in found.items():
        document = _operation(operation)
        if (method, path) in secured:
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


def _require_token(document, method):
    document["security"] = [{"bearer": []}]
    document["responses"]["401"] = ERRORS[401][0]
    if method != "GET":
        document["responses"]["403"] = ERRORS[403][0]


def _add_components(spec):
    spec.components.schema("JSONValue", JSON_VALUE)
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


def _link_name(operation_id):
    return "".join(word.capitalize() for word in operation_id.split("_"))


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
    if conditional.IDEMPOTENCY_KEY in op.headers:
        headers[conditional.IDEMPOTENT_REPLAYED] = _REPLAYED
    if op.links:
        headers["Location"] = {
            "description": "The new session's URL.",
            "required": True,
            "schema": {"type": "string"},
        }
        success["links"] = {
            _link_name(target): {
                "operationId": target,
                "parameters": {"session_id": "$response.body#/id"},
            }
            for target in op.links
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
    # Names of components: apispec makes them $refs.
    parameters += [_HEADER_COMPONENTS[header] for header in op.headers]
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
_DOCS_BLUEPRINT = "swagger_ui"


@bp.get(DOCUMENT_PATH)
@describe(
    "This API description (OpenAPI 3.1)",
    "Generate a client from it, or browse it at `/api/docs/`.",
    errors=(400, 422, 503),
    tag="service",
)
def openapi_document():
    load_query(schemas.no_query_schema)
    return current_app.response_class(
        current_app.extensions["openapi"], mimetype="application/json"
    )


_describe_docs = describe(
    "Interactive documentation (Swagger UI)",
    "Try every operation from the browser; works without internet access.",
    operation_id="api_docs",
    errors=(400, 422, 503),
    tag="service",
    media_type="text/html",
)


def _reject_query():
    load_query(schemas.no_query_schema)


def init_app(app):
    """Serve the document and the docs; call after every other blueprint is registered."""
    docs = get_swaggerui_blueprint(
        DOCS_PATH, DOCUMENT_PATH, config={"app_name": TITLE}, blueprint_name=_DOCS_BLUEPRINT
    )
    docs.before_request(_reject_query)
    app.register_blueprint(bp)
    app.register_blueprint(docs)
    _describe_docs(app.view_functions[f"{_DOCS_BLUEPRINT}.show"])
    # No data here, and a browser opening the docs cannot send a token.
    auth.leave_open(app, DOCUMENT_PATH)
    auth.leave_open(app, DOCS_PATH)
    app.extensions["openapi"] = document(app)
