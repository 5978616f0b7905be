"""The schema of release 0.1.0: sessions and their messages.

A frozen copy of the models as they were, independent of models.py.  A
database made by that release (tables present, no history) is recorded as
being at this migration without running it (see ``migrations.upgrade``).
"""

from peewee import (
    BigIntegerField,
    CharField,
    CompositeKey,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)


class Session(Model):
    id = CharField(primary_key=True, max_length=40)
    agent_id = CharField(max_length=255)
    task_id = CharField(max_length=255, null=True)
    status = CharField(max_length=16)
    prompt = TextField(null=True)
    data = TextField()
    created_at = BigIntegerField()
    last_active = BigIntegerField()
    message_count = IntegerField()

    class Meta:
        table_name = "sessions"
        indexes = (
            (("agent_id", "status", "id"), False),
            (("agent_id", "id"), False),
            (("task_id", "id"), False),
            (("status", "id"), False),
        )


class Message(Model):
    session = ForeignKeyField(Session, column_name="session_id", on_delete="CASCADE")
    seq = IntegerField()
    message_id = CharField(max_length=40)
    role = CharField(max_length=16)
    content = TextField()
    timestamp = BigIntegerField()

    class Meta:
        table_name = "messages"
        primary_key = CompositeKey("session", "seq")


def up(migrator, db):
    with db.bind_ctx([Session, Message]):
        db.create_tables([Session, Message], safe=False)
