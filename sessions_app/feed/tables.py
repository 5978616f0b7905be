"""The feed's tables: ``changes``, ``feed_marks`` (retention's mark) and ``change_queue``."""

from peewee import (
    SQL,
    BigAutoField,
    BigIntegerField,
    CharField,
    IntegerField,
    Model,
    NodeList,
    PostgresqlDatabase,
)

from ..db import database


class SeqField(BigAutoField):
    """A 64-bit key the database assigns and never reuses (``AUTOINCREMENT`` on SQLite)."""

    def ddl(self, ctx):
        node = super().ddl(ctx)
        db = self.model._meta.database
        if isinstance(getattr(db, "obj", db), PostgresqlDatabase):
            return node
        return NodeList((node, SQL("AUTOINCREMENT")))


class _ChangeColumns(Model):
    """What a change says, in the feed and in the queue (``QueuedChange``)."""

    type = CharField(max_length=24)
    session_id = CharField(max_length=40)
    agent_id = CharField(max_length=255)
    task_id = CharField(max_length=255, null=True)
    status = CharField(max_length=16)
    version = IntegerField()
    at = BigIntegerField()
    message_id = CharField(max_length=40, null=True)
    role = CharField(max_length=16, null=True)
    changed = CharField(max_length=64, null=True)  # comma-separated field names
    reason = CharField(max_length=16, null=True)

    class Meta:
        database = database


class Change(_ChangeColumns):
    """One committed write, as the feed tells it; tombstones outlive their session."""

    id = None  # its key is the seq
    seq = SeqField()

    class Meta:
        table_name = "changes"
        indexes = (
            (("session_id", "seq"), False),
            (("agent_id", "seq"), False),
            (("task_id", "seq"), False),
            # Retention removes by age, from the oldest.
            (("at",), False),
        )


class FeedMark(Model):
    """The newest seq retention has removed: a cursor before it may have lost changes (410)."""

    id = IntegerField(primary_key=True)
    removed_through = BigIntegerField()

    class Meta:
        database = database
        table_name = "feed_marks"


class QueuedChange(_ChangeColumns):
    """PostgreSQL: a committed write's change, waiting for a publishing pass to give it its seq."""

    id = BigAutoField()

    class Meta:
        table_name = "change_queue"
