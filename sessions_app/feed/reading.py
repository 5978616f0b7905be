"""Reading the feed: where a request starts (``position``), its pages, and a change as shown."""

from .. import scoping
from ..db import database
from ..prepared import Prepared
from ..storage_errors import CursorGone, CursorUnknown
from . import kinds
from .tables import Change, FeedMark


def marks(db=None):
    """Return ``(newest, removed_through)``: the newest committed seq, and retention's mark.

    ``newest`` is the mark itself when retention removed every change.
    """
    row = (database.obj if db is None else db).execute_sql(_MARKS_SQL).fetchone()
    removed = row[1] or 0
    return max(row[0] or 0, removed), removed


def position(cursor, name="cursor", stands=None):
    """Return the seq a request continues after, for ``cursor`` (None, ``latest`` or a seq).

    Raises ``CursorGone`` (410) for a cursor before what retention removed,
    ``CursorUnknown`` (422, naming ``name``) for one past every change.
    ``stands``: ``marks()`` as the caller has just read them.
    """
    newest, removed = marks() if stands is None else stands
    if cursor is None:
        return removed
    if cursor == kinds.LATEST:
        return newest
    if cursor < removed:
        raise CursorGone()
    if cursor > newest:
        raise CursorUnknown(name)
    return cursor


def page(
    after, limit, session_id=None, agent_id=None, task_id=None, types=None, db=None, stands=None
):
    """Return ``(changes, next_position)``: up to ``limit`` matching changes after ``after``.

    A reader sees a prefix of the feed (recording.py), so the newest seq
    read first bounds what the page looked at: when fewer than ``limit``
    match, the page has looked at everything up to it.  Raises
    ``CursorGone`` when retention has removed changes after ``after``: a
    reader that went on would skip them.  ``db``: the database to read
    (default: the bound one); ``stands``: ``marks(db)`` as the caller has
    just read them (a read fewer).
    """
    horizon, removed = marks(db) if stands is None else stands
    if after < removed:
        raise CursorGone()
    if horizon <= after:
        return [], after
    type_slots = _type_slots(types)
    rows = _page.rows(
        db,
        after=after,
        newest=horizon,
        limit=limit,
        session_id=session_id,
        agent_id=agent_id,
        task_id=task_id,
        **type_slots,
    )
    # Retention may have removed changes after ``after`` since the marks were
    # read, and the rows would then begin past a gap.  Each row carries the
    # mark its statement saw (one snapshot); an empty page reads it again.
    removed = _mark_in(rows)
    if after < (marks(db)[1] if removed is None else removed):
        raise CursorGone()
    found = [as_change(row) for row in rows]
    if len(found) == limit:
        return found, found[-1]["seq"]
    return found, horizon


def after(db, seq, limit):
    """Return ``(changes, removed)``: up to ``limit`` changes of any kind after ``seq``.

    ``changes`` come oldest first; ``removed`` is retention's mark as the
    same read saw it (None with no change found): past ``seq``, changes
    after ``seq`` were removed before the read, and the first of
    ``changes`` lies past a gap.
    """
    rows = _after.rows(db, after=seq, limit=limit)
    return [as_change(row) for row in rows], _mark_in(rows)


def newest(db):
    """Return the newest committed seq in ``db``."""
    return marks(db)[0]


def as_change(row):
    """Return a stored change as the feed shows it (``at`` still in microseconds)."""
    change = {
        "seq": row["seq"],
        "type": row["type"],
        "session_id": row["session_id"],
        "agent_id": row["agent_id"],
        "task_id": row["task_id"],
        "status": row["status"],
        "version": row["version"],
        "at": row["at"],
    }
    kind = row["type"]
    if kind == kinds.MESSAGE_CREATED:
        change["message_id"] = row["message_id"]
        change["role"] = row["role"]
    elif kind == kinds.SESSION_UPDATED:
        change["changed"] = row["changed"].split(",")
    elif kind == kinds.SESSION_DELETED:
        change["reason"] = row["reason"]
    return change


def matcher(session_id=None, agent_id=None, task_id=None, types=None):
    """Return ``match(change)``: whether a change passes the filters, as ``page`` reads them."""
    wanted = [
        (name, value)
        for name, value in (
            ("session_id", session_id),
            ("agent_id", agent_id),
            ("task_id", task_id),
        )
        if value is not None
    ]
    kinds = frozenset(types) if types else None
    # Offered later, by the watcher's thread: the scope is the caller's, now.
    scope = scoping.current()

    def match(change):
        if kinds is not None and change["type"] not in kinds:
            return False
        if scope is not None and not scope.allows(change["agent_id"]):
            return False
        return all(change[name] == value for name, value in wanted)

    # The hub offers a change only to the waiters filed under its session or agent.
    match.key = next((item for item in wanted if item[0] != "task_id"), None)
    return match


def _type_slots(types):
    # Four slots, the unused ones repeating the first type: one statement
    # shape for any set of types, and "type IN (a, b, a, a)" is "IN (a, b)".
    if not types:
        return dict.fromkeys(_TYPE_SLOTS)
    padded = list(types) + [types[0]] * (len(_TYPE_SLOTS) - len(types))
    return dict(zip(_TYPE_SLOTS, padded, strict=True))


_TYPE_SLOTS = tuple(f"type{n}" for n in range(len(kinds.TYPES)))

_MARKS_SQL = (
    "SELECT (SELECT MAX(seq) FROM changes), (SELECT removed_through FROM feed_marks WHERE id = 1)"
)


def _with_mark():
    """Select every column of a change, and retention's mark as the same statement sees it."""
    mark = FeedMark.select(FeedMark.removed_through).where(FeedMark.id == 1)
    return Change.select(*Change._meta.sorted_fields, mark.alias("removed_through"))


def _mark_in(rows):
    """Return retention's mark as rows read ``_with_mark()`` saw it; None with no row."""
    return (rows[0]["removed_through"] or 0) if rows else None


def _page_query(after, newest, limit, session_id=None, agent_id=None, task_id=None, **type_slots):
    query = _with_mark().where((Change.seq > after) & (Change.seq <= newest))
    for field, value in (
        (Change.session_id, session_id),
        (Change.agent_id, agent_id),
        (Change.task_id, task_id),
    ):
        if value is not None:
            query = query.where(field == value)
    kinds = [value for value in type_slots.values() if value is not None]
    if kinds:
        query = query.where(Change.type.in_(kinds))
    query = scoping.restrict(query, Change.agent_id)  # tombstones carry their agent too
    return query.order_by(Change.seq).limit(limit)


_page = Prepared(_page_query)
# The watcher's read of every change, handed to the waiters' matchers (scoped there).
_after = Prepared(
    lambda after, limit: _with_mark().where(Change.seq > after).order_by(Change.seq).limit(limit),
    unscoped=True,
)
