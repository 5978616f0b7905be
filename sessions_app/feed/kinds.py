"""The kinds of change the feed records and why a session was deleted, named in one place."""

SESSION_CREATED = "session.created"
SESSION_UPDATED = "session.updated"
MESSAGE_CREATED = "message.created"
SESSION_DELETED = "session.deleted"

TYPES = (SESSION_CREATED, SESSION_UPDATED, MESSAGE_CREATED, SESSION_DELETED)

#: Why a ``session.deleted`` change (a tombstone) was recorded.
DELETED = "deleted"
EXPIRED = "expired"
REASONS = (DELETED, EXPIRED)

#: The fields a ``session.updated`` change may name in ``changed``.
UPDATABLE = ("status", "data", "prompt")

#: ``cursor=latest``: the newest change committed when the request arrives.
LATEST = "latest"
