"""A Python client of the Session API: ``pip install sessions_app[client]``.

::

    from sessions_app.client import SessionsClient

    with SessionsClient("http://127.0.0.1:8000") as client:
        session = client.create("CLAUDE_CODE", task_id="task-xyz")
        client.send(session.id, "Please continue")
        for summary in client.sessions(agent_id="CLAUDE_CODE", status="active"):
            print(summary.id, summary.message_count)

It imports nothing of the service (no Flask, peewee or marshmallow): a tool
needs only httpx, httpx-sse and stamina.
"""

try:
    from .api import SessionsClient
except ModuleNotFoundError as missing:  # installed without its extra
    raise ModuleNotFoundError(
        f"sessions_app.client needs {missing.name}: pip install 'sessions_app[client]'",
        name=missing.name,
    ) from missing
from .errors import (
    ApiError,
    ConflictError,
    ConnectionFailed,
    GoneError,
    NotFoundError,
    PreconditionFailedError,
    ServiceUnavailableError,
    SessionsError,
    UnprocessableError,
)
from .models import Change, Count, Message, Page, Receipt, Session
from .paging import Pager

__all__ = [
    "ApiError",
    "Change",
    "ConflictError",
    "ConnectionFailed",
    "Count",
    "GoneError",
    "Message",
    "NotFoundError",
    "Page",
    "Pager",
    "PreconditionFailedError",
    "Receipt",
    "ServiceUnavailableError",
    "Session",
    "SessionsClient",
    "SessionsError",
    "UnprocessableError",
]
