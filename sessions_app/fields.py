"""Marshmallow fields for what this API accepts: storable text and JSON."""

import math
import re

from marshmallow import ValidationError, fields, validate

from . import containment, jsonio
from .timefmt import NOT_RFC3339, format_us, parse_rfc3339_us

#: How deep ``data`` may nest; deeper documents are refused, not truncated.
MAX_JSON_DEPTH = 100
#: The integers every database stores exactly (a signed 64-bit integer).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: A change's seq as text, as a cursor or a ``Last-Event-ID`` carries it.
SEQ_PATTERN = "0|[1-9][0-9]{0,17}"
#: Why a cursor is refused, whatever is wrong with it: clients pass back only what they were given.
NOT_ISSUED = "Not a cursor this service issued."
BAD_TEXT = "Must not contain NUL (U+0000) or unpaired surrogate characters."


def is_storable_text(text):
    """Tell whether every database can store ``text`` unchanged."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_problem(value):
    """Return why a JSON value cannot be stored, or None when it can."""
    stack = [(value, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth >= MAX_JSON_DEPTH:
                return f"Nested more than {MAX_JSON_DEPTH} levels deep."
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, item in items:
                if isinstance(key, str) and not is_storable_text(key):
                    return f"A key in {path or '/'}: {BAD_TEXT}"
                stack.append((item, f"{path}/{key}", depth + 1))
        elif isinstance(node, str):
            if not is_storable_text(node):
                return f"At {path}: {BAD_TEXT}"
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, int):
            if not INT64_MIN <= node <= INT64_MAX:
                return f"At {path}: integers must fit in 64 bits."
        elif isinstance(node, float) and not math.isfinite(node):
            return f"At {path}: numbers must be finite."
    return None


class Text(fields.String):
    """A string that every database can store exactly as sent."""

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if not is_storable_text(text):
            raise ValidationError(BAD_TEXT)
        return text


class NotBlank(validate.Validator):
    """Require at least one character that is not whitespace."""

    error = "Must contain a non-whitespace character."

    def __call__(self, value):
        if not value.strip():
            raise ValidationError(self.error)
        return value


class JSONObject(fields.Dict):
    """A free-form JSON object that every database can store unchanged."""

    def _deserialize(self, value, attr, data, **kwargs):
        obj = super()._deserialize(value, attr, data, **kwargs)
        problem = json_problem(obj)
        if problem:
            raise ValidationError(problem)
        return obj


class QueryInt(fields.Integer):
    """An integer from a query string: decimal digits only."""

    # Up to 18 digits: every value a Range may allow (a cursor reaches
    # 2**31 - 1, ten digits) while parsing stays cheap; Range judges the rest.
    MAX_DIGITS = 18
    _digits = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}").fullmatch

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and not self._digits(value):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class NumericCursor(QueryInt):
    """A cursor that is a number (a message's seq), read as ``QueryInt`` reads it.

    The API description declares it a string of digits, as the
    ``next_cursor`` it continues from is.
    """


class FeedCursor(fields.Field):
    """A position in the change feed: ``latest`` or a change's seq, as text."""

    default_error_messages = {"invalid": NOT_ISSUED}
    _digits = re.compile(SEQ_PATTERN).fullmatch

    def __init__(self, latest, **kwargs):
        super().__init__(**kwargs)
        self.latest = latest

    def _deserialize(self, value, attr, data, **kwargs):
        if value == self.latest:
            return value
        if isinstance(value, str) and self._digits(value):
            return int(value)
        raise self.make_error("invalid")


class CommaList(fields.String):
    """Comma-separated choices, returned as a tuple without repeats."""

    def __init__(self, choices, **kwargs):
        super().__init__(**kwargs)
        self.choices = tuple(choices)

    def _deserialize(self, value, attr, data, **kwargs):
        items = super()._deserialize(value, attr, data, **kwargs).split(",")
        bad = [item for item in items if item not in self.choices]
        if bad:
            raise ValidationError(
                f"Must be one or more of {', '.join(self.choices)}, separated by "
                f"commas; {bad[0]!r} is not one."
            )
        return tuple(dict.fromkeys(items))


class Timestamp(fields.Field):
    """Epoch microseconds, written as RFC 3339 UTC with a trailing Z."""

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else format_us(value)


class QueryTimestamp(fields.Field):
    """An RFC 3339 date-time from a query string, loaded as epoch microseconds."""

    default_error_messages = {
        "invalid": (
            "Must be an RFC 3339 date-time with Z or an offset, such as 2024-01-16T10:00:00Z."
        ),
        "plus": "A '+' in a query string reads as a space: send the offset's '+' as %2B.",
        "impossible": "Not a date-time that exists: {reason}.",
    }

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise self.make_error("invalid")
        try:
            return parse_rfc3339_us(value)
        except ValueError as exc:
            if str(exc) != NOT_RFC3339:
                raise self.make_error("impossible", reason=exc) from None
            if " " in value and _parses(value.replace(" ", "+")):
                raise self.make_error("plus") from None
            raise self.make_error("invalid") from None


def _parses(text):
    try:
        parse_rfc3339_us(text)
    except ValueError:
        return False
    return True


class DataFilterField(fields.Field):
    """A ``data`` filter (contract section 10), loaded as a ``DataFilter`` (None for ``{}``).

    From a query string it is JSON text; in a body (a bulk change's filter)
    the object itself.  Either way: an object, nested at most
    ``MAX_DEPTH`` levels, at most ``MAX_LENGTH`` characters as JSON, and
    storable as ``data`` is.
    """

    default_error_messages = {
        "long": f"Must be at most {containment.MAX_LENGTH} characters of JSON.",
        "json": "{reason}",
        "object": 'Must be a JSON object, such as {{"pr": 42}}.',
        "deep": f"Nested more than {containment.MAX_DEPTH} levels deep.",
        "bad": "{problem}",
    }

    def __init__(self, in_body=False, **kwargs):
        super().__init__(**kwargs)
        self.in_body = in_body

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and not self.in_body:
            if len(value) > containment.MAX_LENGTH:
                raise self.make_error("long")
            try:
                value = jsonio.parse_text(value, "The filter")
            except jsonio.BodyError as exc:
                raise self.make_error("json", reason=str(exc)) from None
        if not isinstance(value, dict):
            raise self.make_error("object")
        if containment.depth(value) > containment.MAX_DEPTH:
            raise self.make_error("deep")
        problem = json_problem(value)
        if problem:
            raise self.make_error("bad", problem=problem)
        found = containment.DataFilter(value)
        if len(found.text) > containment.MAX_LENGTH:
            raise self.make_error("long")
        return found if value else None


class JSONBoolean(fields.Boolean):
    """A JSON ``true`` or ``false``, nothing else (no 1, no "yes")."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class JSONInteger(fields.Integer):
    """A JSON integer (``5``, or ``5.0``, which JSON Schema counts as one); never text or a bool."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        if isinstance(value, float) and not value.is_integer():
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)
