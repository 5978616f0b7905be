"""Session statuses, message roles and the status moves that are allowed."""

CREATED = "created"
ACTIVE = "active"
PAUSED = "paused"
COMPLETED = "completed"
FAILED = "failed"

STATUSES = (CREATED, ACTIVE, PAUSED, COMPLETED, FAILED)
FINAL_STATUSES = (COMPLETED, FAILED)

#: Where each status may move to; staying in the same status is always allowed.
TRANSITIONS = {
    CREATED: frozenset({ACTIVE, PAUSED, COMPLETED, FAILED}),
    ACTIVE: frozenset({PAUSED, COMPLETED, FAILED}),
    PAUSED: frozenset({ACTIVE, COMPLETED, FAILED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
}

ROLES = ("user", "assistant", "system")
DEFAULT_ROLE = "user"
MESSAGE_STATUS = "sent"


def can_move(current, new):
    """Tell whether a session in ``current`` may be set to ``new``."""
    return new == current or new in TRANSITIONS[current]
