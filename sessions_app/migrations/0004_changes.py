"""The change feed (contract section 7): ``changes`` and ``feed_marks``.

``changes`` holds one row per committed write; its ``seq`` is assigned by the
database and never reused (``AUTOINCREMENT`` on SQLite, a bigserial on
PostgreSQL).  ``feed_marks`` holds the newest seq retention has removed.
Both are frozen copies of the models as this migration made them.
"""

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


class _Seq(BigAutoField):
    def ddl(self, ctx):
        node = super().ddl(ctx)
        if isinstance(self.model._meta.database, PostgresqlDatabase):
            return node
        return NodeList((node, SQL("AUTOINCREMENT")))


class Change(Model):
    seq = _Seq()
    type = CharField(max_length=24)
    session_id = CharField(max_length=40)
    agent_id = CharField(max_length=255)
    task_id = CharField(max_length=255, null=True)
    status = CharField(max_length=16)
    version = IntegerField()
    at = BigIntegerField()
    message_id = CharField(max_length=40, null=True)
    role = CharField(max_length=16, null=True)
    changed = CharField(max_length=64, null=True)
    reason = CharField(max_length=16, null=True)

    class Meta:
        table_name = "changes"
        indexes = (
            (("session_id", "seq"), False),
            (("agent_id", "seq"), False),
            (("task_id", "seq"), False),
            (("at",), False),
        )


class FeedMark(Model):
    id = IntegerField(primary_key=True)
    removed_through = BigIntegerField()

    class Meta:
        table_name = "feed_marks"


def up(migrator, db):
    with db.bind_ctx([Change, FeedMark]):
        db.create_tables([Change, FeedMark], safe=False)
