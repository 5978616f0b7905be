"""Marshmallow schemas: what each endpoint accepts (In) and returns (Out).

Every In schema rejects unknown keys (marshmallow's default, RAISE).
"""

from marshmallow import (
    INCLUDE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from . import states
from .dumping import dumper
from .feed import kinds
from .fields import (
    NOT_ISSUED,
    CommaList,
    DataFilterField,
    FeedCursor,
    JSONBoolean,
    JSONInteger,
    JSONObject,
    NotBlank,
    NumericCursor,
    QueryInt,
    QueryTimestamp,
    Text,
    Timestamp,
)
from .ids import MESSAGE_ID_PATTERN, SESSION_ID_PATTERN
from .paging import ORDERS, SORTS, CursorError, session_position

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
BULK_MAX_LIMIT = 10_000
BULK_DEFAULT_LIMIT = 1000
_limit = {"load_default": DEFAULT_LIMIT, "validate": validate.Range(1, MAX_LIMIT)}
_name = {"validate": validate.Length(1, 255)}
MAX_WAIT = 60
_wait = {"load_default": 0, "validate": validate.Range(0, MAX_WAIT)}


# -- In ---------------------------------------------------------------------


def _about(text):
    """Describe a field for the API description (sessions_app/openapi.py)."""
    return {"metadata": {"description": text}}


class SessionCreateSchema(Schema):
    agent_id = Text(
        required=True,
        validate=[validate.Length(1, 255), NotBlank()],
        **_about("The agent running the session, e.g. CLAUDE_CODE."),
    )
    task_id = Text(
        allow_none=True,
        validate=validate.Length(max=255),
        **_about("The task the session works on."),
    )
    prompt = Text(allow_none=True, **_about("The initial prompt, stored exactly as sent."))
    data = JSONObject(keys=fields.String(), **_about("Free-form data, {} by default."))


class SessionUpdateSchema(Schema):
    status = fields.String(
        validate=validate.OneOf(states.STATUSES),
        **_about("The new status; completed and failed are final."),
    )
    data = JSONObject(
        keys=fields.String(),
        **_about("Merged into the stored data (JSON Merge Patch): null removes a key."),
    )
    prompt = Text(allow_none=True, **_about("Replaces the prompt; null clears it."))


class SessionFilterQuerySchema(Schema):
    """The filters of the session list and of the count."""

    agent_id = Text(**_name, **_about("Only sessions of this agent (exact match)."))
    # A session may have the task "" (only agent_id must not be blank), so
    # the filter takes "" too: it finds exactly those sessions.
    task_id = Text(
        validate=validate.Length(max=255), **_about("Only sessions of this task (exact match).")
    )
    status = CommaList(
        states.STATUSES,
        **_about("Only sessions in this status, or in any of several: active,paused."),
    )
    created_after = QueryTimestamp(**_about("Only sessions created after this instant."))
    created_before = QueryTimestamp(**_about("Only sessions created at or before this instant."))
    active_after = QueryTimestamp(
        **_about("Only sessions whose last_active is after this instant.")
    )
    active_before = QueryTimestamp(
        **_about("Only sessions whose last_active is at or before this instant.")
    )
    data = DataFilterField(
        **_about(
            "Only sessions whose data contains this JSON object (URL-encoded), as jsonb @> "
            'defines it: {"pr": 42}, {"labels": ["urgent"]}.'
        )
    )


class SessionListQuerySchema(SessionFilterQuerySchema):
    sort = fields.String(
        load_default=SORTS[0],
        validate=validate.OneOf(SORTS),
        **_about("created_at: by creation; last_active: by the latest change or message."),
    )
    order = fields.String(
        load_default=ORDERS[0],
        validate=validate.OneOf(ORDERS),
        **_about("desc: newest first; asc: oldest first."),
    )
    limit = QueryInt(**_limit, **_about("Sessions per page."))
    cursor = Text(**_about("The next_cursor of the previous page (same sort and order)."))

    @post_load
    def _position(self, query, **_kwargs):
        """Turn the cursor into the position it continues from."""
        cursor = query.pop("cursor", None)
        if cursor is not None:
            try:
                at, session_id = session_position(cursor, query["sort"], query["order"])
            except CursorError as exc:
                raise ValidationError(str(exc), field_name="cursor") from None
            query.update(cursor_at=at, cursor_id=session_id)
        return query


class StatusChoice(fields.Field):
    """One status, or a list of them (a bulk change's filter), loaded as a tuple."""

    default_error_messages = {
        "invalid": f"Must be one of {', '.join(states.STATUSES)}, or a non-empty list of them."
    }

    def _deserialize(self, value, attr, data, **kwargs):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise self.make_error("invalid")
        if any(not isinstance(item, str) or item not in states.STATUSES for item in items):
            raise self.make_error("invalid")
        return tuple(dict.fromkeys(items))


class BulkFilterSchema(SessionFilterQuerySchema):
    """Which sessions a bulk change applies to: the list's filters, as JSON."""

    status = StatusChoice(
        metadata={
            "description": "Only sessions in this status, or in any of a list of them.",
            "oneOf": [
                {"type": "string", "enum": list(states.STATUSES)},
                {
                    "type": "array",
                    "items": {"type": "string", "enum": list(states.STATUSES)},
                    "minItems": 1,
                },
            ],
        }
    )
    data = DataFilterField(
        in_body=True,
        **_about('Only sessions whose data contains this object (jsonb @>): {"pr": 42}.'),
    )
    all = JSONBoolean(
        validate=validate.Equal(True, error="Must be true (or leave it out)."),
        **_about("true: every session (an empty filter is refused)."),
    )


class BulkSetSchema(Schema):
    status = fields.String(
        required=True,
        validate=validate.OneOf(states.STATUSES),
        **_about("The status to move each session to, as its PATCH would."),
    )


class BulkChangeSchema(Schema):
    filter = fields.Nested(
        BulkFilterSchema, required=True, **_about('The sessions to change; {"all": true} for all.')
    )
    set = fields.Nested(BulkSetSchema, **_about("Set this status (or give delete)."))
    delete = JSONBoolean(
        validate=validate.Equal(True, error="Must be true (or leave it out)."),
        **_about("true: delete the sessions and their messages (or give set)."),
    )
    dry_run = JSONBoolean(
        load_default=False, **_about("true: change nothing, answer what would happen.")
    )
    limit = JSONInteger(
        load_default=BULK_DEFAULT_LIMIT,
        validate=validate.Range(1, BULK_MAX_LIMIT),
        **_about("Change at most this many sessions, oldest first; repeat until remaining is 0."),
    )

    @validates_schema
    def _one_change(self, body, **_kwargs):
        if ("set" in body) == ("delete" in body):
            raise ValidationError("Give exactly one of set and delete.", field_name="set")
        if not body["filter"]:
            raise ValidationError(
                'Give at least one filter, or {"all": true} for every session.',
                field_name="filter",
            )


class MessageCreateSchema(Schema):
    content = Text(
        required=True, validate=NotBlank(), **_about("The message, stored exactly as sent.")
    )
    role = fields.String(
        load_default=states.DEFAULT_ROLE,
        validate=validate.OneOf(states.ROLES),
        **_about("Who speaks."),
    )


class MessageListQuerySchema(Schema):
    limit = QueryInt(**_limit, **_about("Messages per page."))
    order = fields.String(
        load_default="asc",
        validate=validate.OneOf(("asc", "desc")),
        **_about("asc: oldest first; desc: newest first (the last messages)."),
    )
    cursor = NumericCursor(
        validate=validate.Range(0, 2**31 - 1, error=NOT_ISSUED),
        **_about(
            "The next_cursor of the previous page; it continues in the same order "
            "(0: before the first message)."
        ),
    )
    wait = QueryInt(
        validate=validate.Range(0, MAX_WAIT),
        **_about(
            "Seconds to wait, when the page is empty, for a message it would hold; "
            "next_cursor is then never null."
        ),
    )


class ChangeListQuerySchema(Schema):
    cursor = FeedCursor(
        kinds.LATEST,
        **_about(
            "A previous next_cursor, a change's seq, or latest (from now on); "
            "without it the feed starts at the oldest change kept."
        ),
    )
    limit = QueryInt(**_limit, **_about("Changes per page."))
    session_id = Text(**_name, **_about("Only changes of this session."))
    agent_id = Text(**_name, **_about("Only changes of this agent's sessions."))
    task_id = Text(
        validate=validate.Length(max=255), **_about("Only changes of this task's sessions.")
    )
    types = CommaList(
        kinds.TYPES,
        data_key="type",
        **_about("Only changes of this type, or of any of several."),
    )
    wait = QueryInt(
        **_wait,
        **_about("Seconds to wait for a matching change when there is none yet (long poll)."),
    )


class NoQuerySchema(Schema):
    """For endpoints that take no query parameters: any parameter is unknown."""


# -- Out --------------------------------------------------------------------

# Validators on Out fields never run on dump; they tell the API description
# (sessions_app/openapi.py) which values a response can hold.
_session_id = {"validate": validate.Regexp(f"^{SESSION_ID_PATTERN}$")}


class OutSchema(Schema):
    """A response body that always carries every field (null where allowed).

    The API description lists them all as required, but those whose
    ``only_in`` metadata names when they appear.
    """


class SessionSummarySchema(OutSchema):
    id = fields.String(**_session_id)
    agent_id = fields.String()
    task_id = fields.String(allow_none=True)
    status = fields.String(validate=validate.OneOf(states.STATUSES))
    created_at = Timestamp()
    last_active = Timestamp()
    message_count = fields.Integer()
    status_changed_at = Timestamp()


class SessionSchema(SessionSummarySchema):
    prompt = fields.String(allow_none=True)
    data = fields.Dict()
    version = fields.Integer(
        validate=validate.Range(min=1),
        metadata={
            "description": "1 at creation, raised by one by every change; the ETag is this "
            'number in quotes ("3").'
        },
    )


class SessionListSchema(OutSchema):
    sessions = fields.List(fields.Nested(SessionSummarySchema))
    next_cursor = fields.String(allow_none=True)


StatusCountsSchema = OutSchema.from_dict(
    {status: fields.Integer() for status in states.STATUSES}, name="StatusCountsSchema"
)


class SessionCountSchema(OutSchema):
    count = fields.Integer()
    by_status = fields.Nested(StatusCountsSchema)


class MessageReceiptSchema(OutSchema):
    message_id = fields.String(validate=validate.Regexp(f"^{MESSAGE_ID_PATTERN}$"))
    session_id = fields.String(**_session_id)
    status = fields.Constant(states.MESSAGE_STATUS)
    timestamp = Timestamp()


class MessageSchema(MessageReceiptSchema):
    role = fields.String(validate=validate.OneOf(states.ROLES))
    content = fields.String()


class MessageListSchema(OutSchema):
    messages = fields.List(fields.Nested(MessageSchema))
    next_cursor = fields.String(allow_none=True)


class BulkSkippedSchema(OutSchema):
    conflict = fields.Integer(
        metadata={"description": "Sessions whose move the status table forbade by then."}
    )


class BulkResultSchema(OutSchema):
    matched = fields.Integer(metadata={"description": "Sessions looked at (at most limit)."})
    changed = fields.Integer()
    skipped = fields.Nested(BulkSkippedSchema)
    remaining = fields.Integer(metadata={"description": "Sessions that still match after it."})
    dry_run = fields.Boolean()
    by_status = fields.Nested(
        StatusCountsSchema,
        metadata={"only_in": "dry run", "description": "The matched sessions by status."},
    )


class ChangeSchema(OutSchema):
    seq = fields.Integer()
    type = fields.String(validate=validate.OneOf(kinds.TYPES))
    session_id = fields.String(**_session_id)
    agent_id = fields.String()
    task_id = fields.String(allow_none=True)
    status = fields.String(validate=validate.OneOf(states.STATUSES))
    version = fields.Integer()
    at = Timestamp()
    # Only in some types of change (openapi.py leaves them out of "required").
    message_id = fields.String(
        validate=validate.Regexp(f"^{MESSAGE_ID_PATTERN}$"),
        metadata={"only_in": kinds.MESSAGE_CREATED},
    )
    role = fields.String(
        validate=validate.OneOf(states.ROLES), metadata={"only_in": kinds.MESSAGE_CREATED}
    )
    changed = fields.List(
        fields.String(validate=validate.OneOf(kinds.UPDATABLE)),
        metadata={"only_in": kinds.SESSION_UPDATED},
    )
    reason = fields.String(
        validate=validate.OneOf(kinds.REASONS), metadata={"only_in": kinds.SESSION_DELETED}
    )


class ChangeListSchema(OutSchema):
    changes = fields.List(fields.Nested(ChangeSchema))
    next_cursor = fields.String()


class HealthSchema(OutSchema):
    status = fields.Constant("ok")


class ProblemSchema(Schema):
    """An RFC 9457 problem document: the body of every error."""

    class Meta:
        unknown = INCLUDE  # RFC 9457 lets a problem carry extension members

    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True, validate=validate.Range(400, 599))
    detail = fields.String(required=True)
    instance = fields.String()


class ValidationProblemSchema(ProblemSchema):
    """A 422 problem: ``errors`` maps each bad field to its messages."""

    errors = fields.Dict(keys=fields.String(), required=True)


session_create_schema = SessionCreateSchema()
session_update_schema = SessionUpdateSchema()
session_list_query_schema = SessionListQuerySchema()
session_count_query_schema = SessionFilterQuerySchema()
message_create_schema = MessageCreateSchema()
message_list_query_schema = MessageListQuerySchema()
change_list_query_schema = ChangeListQuerySchema()
no_query_schema = NoQuerySchema()
bulk_change_schema = BulkChangeSchema()

session_schema = SessionSchema()
session_list_schema = SessionListSchema()
session_count_schema = SessionCountSchema()
message_receipt_schema = MessageReceiptSchema()
message_list_schema = MessageListSchema()
bulk_result_schema = BulkResultSchema()
change_list_schema = ChangeListSchema()
health_schema = HealthSchema()

# What the views dump with: the Out schemas above, planned once (see dumping.py).
dump_session = dumper(session_schema)
dump_session_list = dumper(session_list_schema)
dump_session_count = dumper(session_count_schema)
dump_message_receipt = dumper(message_receipt_schema)
dump_message_list = dumper(message_list_schema)
dump_bulk_result = dumper(bulk_result_schema)
dump_change = dumper(ChangeSchema())
dump_change_list = dumper(change_list_schema)
