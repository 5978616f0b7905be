"""Reading a request's JSON body and query string through a schema."""

from urllib.parse import parse_qsl

from flask import request
from marshmallow import ValidationError
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

from .errors import InvalidBody
from .jsonio import BodyError, parse_body


def load_json(schema):
    """Load the request's JSON object body with ``schema``.

    415 unless the body is sent as ``application/json``; 400 unless it is a
    JSON object; 422 (``ValidationError``) for invalid or unknown fields.
    """
    return schema.load(read_json())


def read_json():
    """Return the request's JSON object body as parsed, before any schema: 415, 400."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Send the body as JSON, with Content-Type: application/json.")
    try:
        body = parse_body(_body_bytes())
    except BodyError as exc:
        raise InvalidBody(str(exc)) from None
    if not isinstance(body, dict):
        raise InvalidBody("The body must be a JSON object.")
    return body


def _body_bytes():
    raw = request.get_data(cache=False)
    limit = request.max_content_length
    # Sent chunked (no Content-Length), a body is cut at the limit by Werkzeug
    # and handed over as if it were whole: one more byte means it was larger.
    chunked = request.content_length is None and limit is not None
    if chunked and len(raw) >= limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return raw


_loaded_from_nothing = {}  # schema -> what it loads from an empty query string


def load_query(schema):
    """Load the query string with ``schema``; a parameter given twice is a 422.

    400 when the query string is not UTF-8 (Gunicorn refuses raw non-ASCII
    bytes itself, but other WSGI servers pass them on to Werkzeug).
    """
    if not request.query_string:
        # Most requests have none, and what a schema makes of none never changes.
        if schema not in _loaded_from_nothing:
            _loaded_from_nothing[schema] = schema.load({})
        return dict(_loaded_from_nothing[schema])
    try:
        args = _query_args()
    except UnicodeDecodeError:
        raise BadRequest("The query string is not valid UTF-8.") from None
    repeated = {name: ["Given more than once."] for name, values in args.lists() if len(values) > 1}
    if repeated:
        raise ValidationError(repeated)
    return schema.load(args.to_dict())


def _query_args():
    # Werkzeug keeps percent-escapes that are not UTF-8 as literal text
    # ("%ED%A0%80" stays nine characters); decoded as lone surrogates instead,
    # the text fields refuse them with a 422 naming the parameter.
    pairs = parse_qsl(
        request.query_string.decode(), keep_blank_values=True, errors="surrogateescape"
    )
    return MultiDict(pairs)
