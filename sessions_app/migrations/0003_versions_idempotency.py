"""Versions of sessions and the answers stored under idempotency keys (contract 5 and 6).

``sessions.version`` is added in place (``ALTER TABLE … ADD COLUMN``, never a
rebuild of ``sessions``), NOT NULL with the default 1, which is what every
session already there gets.  ``idempotency_keys`` is new: a frozen copy of
the model as this migration made it.
"""

from peewee import BigIntegerField, CharField, CompositeKey, IntegerField, Model, TextField


class IdempotencyKey(Model):
    scope = CharField(max_length=32)
    key = CharField(max_length=255)
    fingerprint = CharField(max_length=64)
    status = IntegerField()
    body = TextField()
    location = TextField(null=True)
    etag = CharField(max_length=32, null=True)
    created_at = BigIntegerField(index=True)

    class Meta:
        table_name = "idempotency_keys"
        primary_key = CompositeKey("scope", "key")


def up(migrator, db):
    db.execute_sql("ALTER TABLE sessions ADD COLUMN version INTEGER NOT NULL DEFAULT 1")
    with db.bind_ctx([IdempotencyKey]):
        db.create_tables([IdempotencyKey], safe=False)
