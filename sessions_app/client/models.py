"""What the service returns, as dataclasses: datetimes parsed, the JSON kept in ``raw``.

Fields the contract adds later (``version``, ``status_changed_at``) are None
when the service does not send them; anything else it sends is in ``raw``.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def parse_timestamp(text):
    """Return an RFC 3339 timestamp (``2024-01-16T10:00:00Z``) as an aware datetime."""
    if text is None:
        return None
    return datetime.fromisoformat(text)


def format_timestamp(moment):
    """Return a datetime (aware) or RFC 3339 text as RFC 3339 UTC text for a query."""
    if isinstance(moment, str):
        return moment
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} has no time zone: give an aware datetime")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


_raw = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Session:
    """A session: the full form (create, get, update) or a list's summary.

    A summary has no ``prompt``, ``data`` or ``version`` (they are None);
    ``etag`` is the response's ``ETag`` when it carried one.
    """

    id: str
    agent_id: str
    task_id: str | None
    status: str
    created_at: datetime
    last_active: datetime
    message_count: int
    prompt: str | None = None
    data: dict[str, Any] | None = None
    version: int | None = None
    status_changed_at: datetime | None = None
    etag: str | None = None
    raw: dict[str, Any] = _raw

    @classmethod
    def from_json(cls, doc, etag=None):
        return cls(
            id=doc["id"],
            agent_id=doc["agent_id"],
            task_id=doc.get("task_id"),
            status=doc["status"],
            created_at=parse_timestamp(doc["created_at"]),
            last_active=parse_timestamp(doc["last_active"]),
            message_count=doc["message_count"],
            prompt=doc.get("prompt"),
            data=doc.get("data"),
            version=doc.get("version"),
            status_changed_at=parse_timestamp(doc.get("status_changed_at")),
            etag=etag,
            raw=doc,
        )


@dataclass(frozen=True)
class Message:
    """A stored message of a session."""

    message_id: str
    session_id: str
    role: str
    content: str
    status: str
    timestamp: datetime
    raw: dict[str, Any] = _raw

    @classmethod
    def from_json(cls, doc):
        return cls(
            message_id=doc["message_id"],
            session_id=doc["session_id"],
            role=doc["role"],
            content=doc["content"],
            status=doc["status"],
            timestamp=parse_timestamp(doc["timestamp"]),
            raw=doc,
        )


@dataclass(frozen=True)
class Receipt:
    """The answer to a sent message: its id and when it was stored.

    ``replayed`` is True when the service answered from an earlier request
    with the same ``Idempotency-Key`` (a retry whose first answer was lost).
    """

    message_id: str
    session_id: str
    status: str
    timestamp: datetime
    replayed: bool = False
    raw: dict[str, Any] = _raw

    @classmethod
    def from_json(cls, doc, replayed=False):
        return cls(
            message_id=doc["message_id"],
            session_id=doc["session_id"],
            status=doc["status"],
            timestamp=parse_timestamp(doc["timestamp"]),
            replayed=replayed,
            raw=doc,
        )


@dataclass(frozen=True)
class Change:
    """One entry of the change feed: a session created, updated, messaged or deleted."""

    seq: int
    type: str
    session_id: str
    agent_id: str
    task_id: str | None
    status: str
    version: int | None
    at: datetime
    message_id: str | None = None
    role: str | None = None
    changed: tuple[str, ...] = ()
    reason: str | None = None
    raw: dict[str, Any] = _raw

    @classmethod
    def from_json(cls, doc):
        return cls(
            seq=doc["seq"],
            type=doc["type"],
            session_id=doc["session_id"],
            agent_id=doc["agent_id"],
            task_id=doc.get("task_id"),
            status=doc["status"],
            version=doc.get("version"),
            at=parse_timestamp(doc["at"]),
            message_id=doc.get("message_id"),
            role=doc.get("role"),
            changed=tuple(doc.get("changed") or ()),
            reason=doc.get("reason"),
            raw=doc,
        )


@dataclass(frozen=True)
class Count:
    """How many sessions match, in all and by status."""

    count: int
    by_status: dict[str, int]
    raw: dict[str, Any] = _raw

    @classmethod
    def from_json(cls, doc):
        return cls(count=doc["count"], by_status=dict(doc["by_status"]), raw=doc)


@dataclass(frozen=True)
class Bulk:
    """What a bulk change did (or, on a dry run, would do)."""

    matched: int
    changed: int
    conflicts: int
    remaining: int
    dry_run: bool
    by_status: dict[str, int] | None = None
    raw: dict[str, Any] = _raw

    @classmethod
    def from_json(cls, doc):
        return cls(
            matched=doc["matched"],
            changed=doc["changed"],
            conflicts=doc["skipped"]["conflict"],
            remaining=doc["remaining"],
            dry_run=doc["dry_run"],
            by_status=doc.get("by_status"),
            raw=doc,
        )


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list: its items and the cursor of the next (None after the last)."""

    items: list[T]
    next_cursor: str | None
    raw: dict[str, Any] = _raw

    def __iter__(self):
        return iter(self.items)

    def __len__(self):
        return len(self.items)
