"""What storage refuses, as plain exceptions: no HTTP here (``errors.py`` maps each to a problem).

Each message is the problem's ``detail`` as clients read it.
"""

from marshmallow import ValidationError

from .fields import NOT_ISSUED


class StorageError(Exception):
    """A refusal of storage's own, answered with the problem ``errors.py`` maps it to."""


class SessionNotFound(StorageError):
    """No session has this id (or none the caller's scope reaches): 404."""

    def __init__(self, session_id):
        super().__init__(f"No session has the id {session_id!r}.")


class AgentOutOfScope(StorageError):
    """A scoped token asked to create a session for an agent outside its scope: 403."""

    def __init__(self, agent_id):
        super().__init__(f"This token may not act for the agent {agent_id!r}.")
        self.errors = {"agent_id": ["Not an agent this token may act for."]}


class StatusConflict(StorageError):
    """The session's status forbids the change: 409."""

    def __init__(self, current, new=None, message=False):
        if message:
            detail = f"The session is {current}, and a {current} session takes no messages."
        else:
            detail = f"The session is {current} and cannot move to {new}."
        super().__init__(detail)


class VersionMismatch(StorageError):
    """``If-Match`` does not name the session's version: 412."""

    def __init__(self, version):
        super().__init__(
            f'The session is at version {version} (ETag "{version}"), which If-Match '
            "does not name: read it again and retry."
        )


class KeyInFlight(StorageError):
    """A request with this ``Idempotency-Key`` is still being handled: 409."""

    def __init__(self):
        super().__init__(
            "A request with this Idempotency-Key is still being handled; retry it "
            "shortly to get its answer."
        )


class CursorGone(StorageError):
    """Retention removed changes after this feed position: 410."""

    def __init__(self):
        super().__init__(
            "Changes after this cursor are no longer kept (CHANGES_RETENTION_SECONDS), so some "
            "may be lost: list the sessions again, then follow the feed from cursor=latest."
        )


class CursorUnknown(ValidationError):
    """A feed position past every change recorded: not one the service issued (422)."""

    def __init__(self, name):
        super().__init__({name: [NOT_ISSUED]})


class WaitingFull(StorageError):
    """Every waiting slot of this process is taken: 503 with ``Retry-After``."""

    def __init__(self, kind):
        super().__init__(
            "This server cannot hold another waiting request or stream right now; retry later."
        )
        self.kind = kind
