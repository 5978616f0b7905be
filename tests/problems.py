"""What the contract promises every response: problem bodies, formats, no leaks."""

import re
from datetime import datetime

TITLES = {
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    503: "Service Unavailable",
}
INVALID = "The request has invalid fields; see errors."
BAD_TEXT = "Must not contain NUL (U+0000) or unpaired surrogate characters."
NOT_FOUND_PATH = (
    "The requested URL was not found on the server. If you entered the URL manually "
    "please check your spelling and try again."
)
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z").fullmatch
SESSION_ID = re.compile(r"session-[A-Za-z0-9_~-]{16,}").fullmatch
MESSAGE_ID = re.compile(r"msg-[A-Za-z0-9_~-]{16,}").fullmatch
SEED_FULL_KEYS = {
    "id",
    "agent_id",
    "task_id",
    "status",
    "created_at",
    "last_active",
    "message_count",
    "data",
}
SEED_SUMMARY_KEYS = {
    "id",
    "agent_id",
    "task_id",
    "status",
    "created_at",
    "last_active",
    "message_count",
}
# Section 8 adds status_changed_at to both forms.
SUMMARY_KEYS = SEED_SUMMARY_KEYS | {"status_changed_at"}
FULL_KEYS = SUMMARY_KEYS | {"prompt", "data", "version"}
MESSAGE_KEYS = {"message_id", "session_id", "role", "content", "status", "timestamp"}
RECEIPT_KEYS = {"message_id", "session_id", "status", "timestamp"}
# Words that only a leaked stack trace, SQL statement or server path would show.
LEAKS = (
    "Traceback",
    'File "',
    ".py",
    "/work",
    "/tmp",
    "SELECT",
    "INSERT",
    "UPDATE ",
    "DELETE FROM",
    "sqlite",
    "psycopg",
    "peewee",
    "marshmallow",
)


def problem(status, detail, **extra):
    """Return the problem document the contract promises for ``status``."""
    return {
        "type": "about:blank",
        "title": TITLES[status],
        "status": status,
        "detail": detail,
        **extra,
    }


def invalid(**errors):
    """Return the 422 problem document naming ``errors``."""
    return problem(422, INVALID, errors=errors)


def assert_problem(response, expected):
    """Check a response is exactly the problem document ``expected``, with no leaks."""
    assert response.status_code == expected["status"], response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json", response.mimetype
    got = response.get_json()
    # ``instance`` names this occurrence (the request id), so it is never the same twice.
    instance = got.pop("instance", None)
    assert instance is None or isinstance(instance, str), instance
    assert got == expected, f"got {got!r}, expected {expected!r}"
    assert_no_leak(response)


def assert_no_leak(response):
    """Check the body shows no stack trace, SQL or server file path."""
    text = response.get_data(as_text=True)
    for word in LEAKS:
        assert word not in text, f"{word!r} in {text!r}"


def parse_time(text):
    """Parse an RFC 3339 UTC timestamp of the API."""
    assert TIMESTAMP(text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def assert_unavailable(response):
    """Assert a 503 problem saying the database cannot be reached, with Retry-After."""
    assert_problem(
        response,
        problem(503, "The database cannot be reached right now; retry the request later."),
    )
    assert response.headers["Retry-After"] == "2"
