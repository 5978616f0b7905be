"""The contract's own tables, written out here so the tests do not take them from the code."""

STATUSES = ("created", "active", "paused", "completed", "failed")

#: Section 3, PATCH: where each status may move to.
ALLOWED = {
    "created": {"active", "paused", "completed", "failed"},
    "active": {"paused", "completed", "failed"},
    "paused": {"active", "completed", "failed"},
    "completed": set(),
    "failed": set(),
}
