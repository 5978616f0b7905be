"""Fast dumps: a plain function per Out schema, planned once from its declared fields.

``Schema.dump`` looks up, dispatches and wraps every field of every object on
every call; on a page of 50 sessions that was most of the request's time.
``dumper(schema)`` reads the schema's fields once, at import, and returns a
function that builds the same dict with one look-up per field.  The schema
stays the one description of the shape: a field added there is dumped here,
and a field type this module does not know is dumped by marshmallow itself.
"""

from marshmallow import fields

from .fields import Timestamp
from .timefmt import format_us

# Field types whose dump is the stored value itself, for the values the
# models return (str, int, and dicts read from JSON).
_AS_IS = (fields.String, fields.Integer, fields.Raw)
_MISSING = object()


def dumper(schema):
    """Return a function that dumps an object as ``schema.dump`` would."""
    plan = [_plan(name, field) for name, field in schema.dump_fields.items()]

    def dump(obj):
        out = {}
        for key, attribute, convert, constant in plan:
            if constant is not _MISSING:
                out[key] = constant
                continue
            value = obj.get(attribute, _MISSING)
            if value is not _MISSING:
                out[key] = value if convert is None or value is None else convert(value, obj)
        return out

    return dump


def _plan(name, field):
    key = field.data_key or name
    attribute = field.attribute or name
    if isinstance(field, fields.Constant):
        return key, attribute, None, field.constant
    return key, attribute, _converter(name, field), _MISSING


def _converter(name, field):
    """Return ``convert(value, obj)``, or None when the value is dumped as it is."""
    kind = type(field)
    if kind is Timestamp:
        return lambda value, obj: format_us(value)
    if kind is fields.Nested and not field.many:
        nested = dumper(field.schema)
        return lambda value, obj: nested(value)
    if kind is fields.List and type(field.inner) is fields.Nested and not field.inner.many:
        nested = dumper(field.inner.schema)
        return lambda value, obj: [nested(item) for item in value]
    if kind in _AS_IS or (kind is fields.Dict and not (field.key_field or field.value_field)):
        return None
    return lambda value, obj: field.serialize(name, obj)
