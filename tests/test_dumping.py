"""The fast dumps give exactly what the Out schemas' own dump gives."""

import pytest
from marshmallow import Schema, fields

from sessions_app import schemas
from sessions_app.dumping import dumper

SUMMARY = {
    "id": "session-0sgp1yq9pcjzth8vb16f329w3t40",
    "agent_id": "CLAUDE_CODE",
    "task_id": None,
    "status": "active",
    "created_at": 1_705_399_200_123_456,
    "last_active": 1_705_399_500_000_001,
    "message_count": 3,
}
SESSION = {**SUMMARY, "prompt": None, "data": {"workdir": "/src", "nested": {"a": [1, None]}}}
RECEIPT = {
    "message_id": "msg-0sgp1yq9pcjzth8vb16f329w3t40",
    "session_id": SUMMARY["id"],
    "status": "sent",
    "timestamp": 1_705_399_500_000_001,
}
MESSAGE = {**RECEIPT, "role": "user", "content": "héllo", "seq": 1}


@pytest.mark.parametrize(
    ("schema", "obj"),
    [
        (schemas.session_schema, SESSION),
        (schemas.session_schema, {**SESSION, "task_id": "t-1", "prompt": "Go.", "data": {}}),
        (schemas.session_schema, {**SESSION, "extra": "not in the schema"}),
        (schemas.session_schema, {"id": SESSION["id"]}),
        (schemas.session_list_schema, {"sessions": [SUMMARY, SUMMARY], "next_cursor": "x"}),
        (schemas.session_list_schema, {"sessions": [], "next_cursor": None}),
        (schemas.message_receipt_schema, RECEIPT),
        (schemas.message_receipt_schema, {**RECEIPT, "status": None}),
        (schemas.message_list_schema, {"messages": [MESSAGE], "next_cursor": "1"}),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Schema) else "",
)
def test_dump_is_the_schemas_dump(schema, obj):
    dumped = dumper(schema)(obj)
    assert dumped == schema.dump(obj)
    assert list(dumped) == list(schema.dump(obj))  # the same key order, so the same bytes


class Unusual(Schema):
    renamed = fields.String(data_key="shownAs", attribute="stored")
    price = fields.Float()
    when = fields.Nested(schemas.MessageReceiptSchema, allow_none=True)
    many = fields.Nested(schemas.MessageReceiptSchema, many=True)


@pytest.mark.parametrize(
    "obj",
    [
        {"stored": "x", "price": 3, "when": RECEIPT, "many": [RECEIPT]},
        {"stored": None, "price": None, "when": None},
        {},
    ],
)
def test_fields_it_does_not_plan_are_dumped_by_marshmallow(obj):
    dumped = dumper(Unusual())(obj)
    assert dumped == Unusual().dump(obj)
    assert list(dumped) == list(Unusual().dump(obj))
