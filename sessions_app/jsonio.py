"""JSON in and out: strict parsing of request bodies, orjson for responses (no Flask here)."""

import json

import orjson


class BodyError(ValueError):
    """The request body is not a JSON document."""


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _body_int(digits):
    # int() refuses more than 4300 digits, which would make valid JSON a 400.
    # Past 19 digits a number is outside 64 bits anyway: keep one that is, so
    # the schemas refuse it as a value (422) like any other too large integer.
    if len(digits) > 20:
        return -(2**64) if digits.startswith("-") else 2**64
    return int(digits)


_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_body_int)


def parse_body(raw):
    """Parse a UTF-8 JSON document, raising ``BodyError`` with the reason.

    The standard library parser keeps integers of any size exactly (orjson
    would turn large ones into floats), so the schemas can reject what cannot
    be stored instead of silently changing it.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("The body is not valid UTF-8.") from None
    return parse_text(text, "The body")


def parse_text(text, what="The text"):
    """Parse a JSON document from text as ``parse_body`` does, naming ``what`` in errors."""
    try:
        return _decoder.decode(text)
    except RecursionError:
        raise BodyError(f"{what} is nested too deeply.") from None
    except ValueError as exc:
        raise BodyError(f"{what} is not valid JSON: {exc}.") from None


def dumps(obj):
    """Serialize ``obj`` to compact JSON bytes."""
    return orjson.dumps(obj)


def canonical(obj):
    """Serialize ``obj`` with sorted keys, so equal documents give equal bytes."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
