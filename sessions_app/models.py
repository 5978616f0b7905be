"""Sessions and their messages, and the writes that own their transactions.

A create and a message write with ``database.transaction()``: sent with an
``Idempotency-Key`` they run inside the transaction that stores their answer
(``idempotency.py``), and join it rather than open a savepoint.  Every change
of a session raises its ``version`` in the statement that makes the change.

A token scoped to agents (scoping.py) reaches only their sessions: the list
filters (``_filtered``) and every statement by id carry the scope in the
WHERE that names the session, so a session outside it is found exactly as a
missing one is, by the same statements.
"""

import json
import logging
from functools import partial

from peewee import (
    SQL,
    BigIntegerField,
    Case,
    CharField,
    CompositeKey,
    ForeignKeyField,
    IntegerField,
    Model,
    ModelIndex,
    NodeList,
    PostgresqlDatabase,
    SchemaManager,
    TextField,
    Tuple,
    Value,
    fn,
)

from . import containment, feed, jsonio, metrics, scoping
from .conditional import check_if_match
from .db import connected, database
from .feed import kinds
from .ids import first_session_id, last_session_id, new_message_id, new_session_id
from .merge_patch import merge_patch
from .paging import ORDERS, SORTS
from .prepared import Prepared
from .states import ACTIVE, CREATED, FINAL_STATUSES, MESSAGE_STATUS, STATUSES, can_move
from .storage_errors import SessionNotFound, StatusConflict
from .timefmt import now_us

logger = logging.getLogger(__name__)


class JSONTextField(TextField):
    """A JSON document stored as the text it was written as.

    PostgreSQL's jsonb rewrites numbers (1e300 reads back as a 301-digit
    integer that no longer serializes), so ``data`` is text on every database.
    """

    def db_value(self, value):
        return None if value is None else jsonio.dumps(value).decode()

    def python_value(self, value):
        return None if value is None else json.loads(value)


# Every SQLite database the app binds gets the function data filters use.
database.attach_callback(containment.install)


class BaseModel(Model):
    class Meta:
        database = database


class _SessionSchema(SchemaManager):
    """The sessions table's indexes, with those data filters use, which differ by database.

    The agent's ``(agent_id, id)`` also carries ``data`` on SQLite, where a
    data filter with an agent is checked on the index's entries (0008); on
    PostgreSQL a GIN index of ``data`` serves data filters (0006).
    """

    def _create_indexes(self, safe=True):
        made = super()._create_indexes(safe)
        model = self.model
        if isinstance(database.obj, PostgresqlDatabase):
            indexes = [
                ModelIndex(model, (model.agent_id, model.id), safe=safe),
                ModelIndex(
                    model, (containment.INDEXED,), safe=safe, using="gin", name=containment.INDEX
                ),
            ]
        else:
            indexes = [ModelIndex(model, (model.agent_id, model.id, model.data), safe=safe)]
        made.extend(self._create_context().sql(index) for index in indexes)
        return made


class Session(BaseModel):
    """An agent's session.

    Ids are time-ordered, so the primary key is also the creation order, and
    a window on ``created_at`` is a range of ids.  Each list filter has an
    index ending in ``id`` (newest or oldest created first) and one ending in
    ``(last_active, id)`` (most or least recently active first), so that a
    page in either sort is one range scan; ``(status, last_active, id)`` is
    also how prune finds expired sessions.
    """

    id = CharField(primary_key=True, max_length=40)
    agent_id = CharField(max_length=255)
    task_id = CharField(max_length=255, null=True)
    status = CharField(max_length=16)
    prompt = TextField(null=True)
    data = JSONTextField()
    created_at = BigIntegerField()
    last_active = BigIntegerField()
    status_changed_at = BigIntegerField()
    message_count = IntegerField()
    # DEFAULT 1 in the table too: rows that predate versions are at version 1.
    version = IntegerField(default=1, constraints=[SQL("DEFAULT 1")])

    class Meta:
        table_name = "sessions"
        schema_manager_class = _SessionSchema
        indexes = (
            (("agent_id", "status", "id"), False),
            # (agent_id, id): see _SessionSchema.
            (("task_id", "id"), False),
            (("status", "id"), False),
            (("last_active", "id"), False),
            (("agent_id", "last_active", "id"), False),
            (("task_id", "last_active", "id"), False),
            (("status", "last_active", "id"), False),
        )

    @classmethod
    @connected()
    def open(cls, agent_id, task_id=None, prompt=None, data=None):
        """Store a new session and return it as a dict."""
        scoping.check_agent(agent_id)
        now = now_us()
        row = {
            "id": new_session_id(now),
            "agent_id": agent_id,
            "task_id": task_id,
            "status": CREATED,
            "prompt": prompt,
            "data": {} if data is None else data,
            "created_at": now,
            "last_active": now,
            "status_changed_at": now,
            "message_count": 0,
            "version": 1,
        }
        # Writers take turns (db.WriterQueue), so the JSON is written before
        # the transaction: every writer queued behind this one would wait for it.
        values = {**row, "data": cls.data.db_value(row["data"])}
        with database.transaction():
            _store_session.execute(**values)
            feed.record(kinds.SESSION_CREATED, row, now)
        logger.debug("Created session %s for agent %s", row["id"], agent_id)
        return row

    @classmethod
    @connected()
    def fetch(cls, session_id):
        """Return the session as a dict, or raise ``SessionNotFound``."""
        rows = _session_by_id.rows(session_id=session_id)
        if not rows:
            raise SessionNotFound(session_id)
        return rows[0]

    @classmethod
    @connected()
    def version_of(cls, session_id):
        """Return the session's version, or raise ``SessionNotFound``; reads nothing else."""
        rows = _version_by_id.execute(session_id=session_id).fetchall()
        if not rows:
            raise SessionNotFound(session_id)
        return rows[0][0]

    @classmethod
    @connected()
    def page(cls, limit, sort="created_at", order="desc", status=None, **filters):
        """Return up to ``limit + 1`` summaries in ``sort``/``order``, after the cursor.

        ``status`` is a tuple of statuses; ``filters``: ``agent_id``,
        ``task_id``, the time windows and the cursor's position
        (``cursor_at``, ``cursor_id``), as ``SessionListQuerySchema`` loads them.
        """
        if sort == "created_at":
            # Only in this sort: a range of ids is then the range the page
            # scans; in the other it would tempt the planner off the index
            # that gives the order.
            filters = _with_id_bounds(filters)
        if filters.get("data") is not None and (not status or len(status) == 1):
            # A data filter's SQL depends on its shape: generated per request.
            status = status[0] if status else None
            query = _session_page_query(sort, order, limit + 1, status=status, **filters)
            return list(query.dicts())
        if not status or len(status) == 1:
            return _session_pages[sort, order].rows(
                limit=limit + 1, status=status[0] if status else None, **filters
            )
        # One range scan per status on (…, status, …), merged; an IN list
        # would read every matching row and sort them all.
        parts = [_session_page_query(sort, order, limit + 1, status=s, **filters) for s in status]
        union = parts[0]
        for part in parts[1:]:
            union = union + part
        return list(union.order_by(*_sort_keys(sort, order)).limit(limit + 1).dicts())

    @classmethod
    @connected()
    def count_by_status(cls, status=None, **filters):
        """Return ``{status: count}`` of the sessions that match, every status present.

        One count per status, in one query: each is a range of an index that
        begins with (or follows ``agent_id`` with) the status, which PostgreSQL
        reads without the table and SQLite without decoding rows; a GROUP BY
        over the whole set took half as long again.
        """
        filters = _with_id_bounds(filters)
        counts = dict.fromkeys(STATUSES, 0)
        if filters.get("data") is not None:
            # One pass over what the data filter (or an agent's range) finds,
            # rather than one per status.  On SQLite the groups are not read
            # in order of an index that begins with the status (``+status`` is
            # no column): the agent's index with ``data`` is the one that
            # checks the filter without reading the rows (0008).
            group = cls.status
            if not isinstance(database.obj, PostgresqlDatabase):
                group = NodeList((SQL("+"), cls.status), glue="")
            query = _filtered(cls.select(cls.status, fn.COUNT(SQL("*"))), status=status, **filters)
            counts.update(query.group_by(group).tuples())
            return counts
        parts = [
            _filtered(cls.select(Value(s).alias("status"), fn.COUNT(SQL("*"))), status=s, **filters)
            for s in status or STATUSES
        ]
        query = parts[0]
        for part in parts[1:]:
            query = query + part
        counts.update(query.tuples())
        return counts

    @classmethod
    @connected()
    def change(cls, session_id, patch, if_match=None):
        """Apply a validated PATCH body and return the session after it.

        The row is locked while ``if_match`` (the ``If-Match`` tags, or None)
        is checked and the new values are worked out, so concurrent PATCHes
        of one session apply one after the other and of two sent with the
        same ``If-Match`` only the first matches.  Only a change of a stored
        value moves ``last_active`` and ``version``.
        """
        with database.atomic():
            rows = _locked_session_by_id.rows(session_id=session_id)
            if not rows:
                raise SessionNotFound(session_id)
            row = rows[0]
            check_if_match(if_match, row["version"])
            changed = _changes(row, patch)
            if changed:
                now = now_us()
                fields = write_changes([row], changed, now)
                record_updates([row], fields, now)
        if changed:
            logger.debug("Updated session %s: %s", session_id, ", ".join(fields))
        return row

    @classmethod
    @connected()
    def remove(cls, session_id, if_match=None):
        """Delete the session and its messages, or raise ``SessionNotFound``.

        With ``if_match`` (the ``If-Match`` tags) the row is locked and its
        version checked first, in the same transaction.
        """
        with database.atomic():
            if if_match is not None:
                found = _locked_version_by_id.execute(session_id=session_id).fetchall()
                if not found:
                    raise SessionNotFound(session_id)
                check_if_match(if_match, found[0][0])
            deleted = _delete_session.rows(session_id=session_id)
            if not deleted:
                raise SessionNotFound(session_id)
            record_tombstones(deleted, now_us())
        logger.debug("Deleted session %s (%d messages)", session_id, deleted[0]["message_count"])


#: What a deleted session leaves for its tombstone (with its id), and its message count.
TOMBSTONE_FIELDS = (
    Session.agent_id,
    Session.task_id,
    Session.status,
    Session.version,
    Session.message_count,
)


def _locked(query):
    """Return ``query``'s rows as dicts, locked for the transaction (where the database can)."""
    return (query.for_update() if database.for_update else query).dicts()


def write_changes(rows, changed, now):
    """Store ``changed`` (found by ``_changes``) on the sessions ``rows``; return the fields' names.

    As every change of a session: ``last_active`` moves to ``now``, the
    version goes up by one, a new status stamps ``status_changed_at``; each
    row is updated to match.  One statement for all the rows (a bulk
    change's batch).  The caller records the changes (``record_updates``)
    before its transaction ends.
    """
    if "status" in changed:
        changed["status_changed_at"] = now
    if len(rows) == 1:
        versions = {rows[0]["id"]: _write_one(rows[0]["id"], changed, now)}
    else:
        update = Session.update({**changed, "last_active": now, "version": Session.version + 1})
        ids = [row["id"] for row in rows]
        query = scoping.restrict(update.where(Session.id.in_(ids)), Session.agent_id)
        versions = dict(query.returning(Session.id, Session.version).tuples().execute())
    for row in rows:
        row.update(changed, last_active=now, version=versions[row["id"]])
    return [name for name in kinds.UPDATABLE if name in changed]


def _write_one(session_id, changed, now):
    """Store ``changed`` on one session (a PATCH) with its prepared statement; return its version.

    The statement is prepared once per set of changed fields.
    """
    values = dict(changed)
    if "data" in values:
        values["data"] = Session.data.db_value(values["data"])
    names = frozenset(changed)
    statement = _change_statements.get(names)
    if statement is None:
        statement = _change_statements[names] = Prepared(partial(_change_query, names))
    return statement.rows(session_id=session_id, now=now, **values)[0]["version"]


def record_updates(rows, fields, now):
    """Append the ``session.updated`` change of each of ``rows`` to the feed."""
    feed.record_many(kinds.SESSION_UPDATED, rows, now, changed=fields)


def delete_rows(ids):
    """Delete sessions and their messages; return the tombstones' fields of those there were."""
    query = scoping.restrict(Session.delete().where(Session.id.in_(ids)), Session.agent_id)
    query = query.returning(Session.id, *TOMBSTONE_FIELDS)
    return list(query.dicts().execute())


def record_tombstones(tombstones, now):
    """Append deleted sessions' tombstones (reason ``deleted``) to the feed."""
    feed.record_many(kinds.SESSION_DELETED, tombstones, now, reason=kinds.DELETED)


def _changes(row, patch):
    """Return the stored values ``patch`` would change, checking the status move."""
    found = {}
    status = patch.get("status", row["status"])
    if status != row["status"]:
        if not can_move(row["status"], status):
            raise StatusConflict(row["status"], status)
        found["status"] = status
    if "data" in patch:
        data = merge_patch(row["data"], patch["data"])
        if jsonio.canonical(data) != jsonio.canonical(row["data"]):
            found["data"] = data
    if "prompt" in patch and patch["prompt"] != row["prompt"]:
        found["prompt"] = patch["prompt"]
    return found


class Message(BaseModel):
    """A message sent to a session.

    ``seq`` numbers a session's messages from 1; it is the session's
    ``message_count`` just after the increment, so the primary key
    ``(session_id, seq)`` orders them exactly and a page is one range scan.
    """

    # No index of its own: the primary key (session_id, seq) serves every
    # look-up by session, the cascade of a delete included.
    session = ForeignKeyField(Session, column_name="session_id", on_delete="CASCADE", index=False)
    seq = IntegerField()
    message_id = CharField(max_length=40)
    role = CharField(max_length=16)
    content = TextField()
    timestamp = BigIntegerField()

    class Meta:
        table_name = "messages"
        primary_key = CompositeKey("session", "seq")

    @classmethod
    @connected()
    def send(cls, session_id, content, role):
        """Store a message and count it on its session, in one transaction."""
        with database.transaction():
            now = now_us()
            counted = _count_message.rows(session_id=session_id, now=now)
            if not counted:
                _refuse_message(session_id)
            session = {**counted[0], "id": session_id}
            message_id = new_message_id(now)
            _store_message.execute(
                session_id=session_id,
                seq=session["message_count"],
                message_id=message_id,
                role=role,
                content=content,
                timestamp=now,
            )
            feed.record(kinds.MESSAGE_CREATED, session, now, message_id=message_id, role=role)
        metrics.MESSAGES_STORED.labels(role).inc()
        return {
            "message_id": message_id,
            "session_id": session_id,
            "status": MESSAGE_STATUS,
            "timestamp": now,
        }

    @classmethod
    @connected()
    def page(cls, session_id, limit, cursor=None, order="asc"):
        """Return up to ``limit + 1`` messages of a session in ``order``, after ``cursor``.

        ``cursor`` is a ``seq``: oldest first the page starts after it,
        newest first before it.
        """
        rows = _message_pages[order].rows(session_id=session_id, cursor=cursor, limit=limit + 1)
        if not rows and not _by_id(Session.select(), session_id).exists():
            raise SessionNotFound(session_id)
        return rows


def _refuse_message(session_id):
    status = _by_id(Session.select(Session.status), session_id).scalar()
    if status is None:
        raise SessionNotFound(session_id)
    raise StatusConflict(status, message=True)


# -- the hot statements, generated once per database (see prepared.py) -------


def _by_id(query, session_id):
    """Return ``query`` on the session ``session_id``, if the current scope reaches it."""
    return scoping.restrict(query.where(Session.id == session_id), Session.agent_id)


_session_by_id = Prepared(lambda session_id: _by_id(Session.select(), session_id))


_SUMMARY_FIELDS = (
    Session.id,
    Session.agent_id,
    Session.task_id,
    Session.status,
    Session.created_at,
    Session.last_active,
    Session.status_changed_at,
    Session.message_count,
)


_version_by_id = Prepared(lambda session_id: _by_id(Session.select(Session.version), session_id))

# A PATCH's and a DELETE's reads, the row locked for the transaction (where the database can).
_locked_session_by_id = Prepared(lambda session_id: _locked(_by_id(Session.select(), session_id)))
_locked_version_by_id = Prepared(
    lambda session_id: _locked(_by_id(Session.select(Session.version), session_id))
)
_delete_session = Prepared(
    lambda session_id: _by_id(Session.delete(), session_id).returning(Session.id, *TOMBSTONE_FIELDS)
)


def _change_query(names, session_id, now, **values):
    """Update one session's fields ``names`` (a PATCH's changes, see ``write_changes``)."""
    # ``data`` comes as the JSON text to store; a value not given is NULL (a prompt taken away).
    fields = {name: values.get(name) for name in names}
    if fields.get("data") is not None:
        fields["data"] = Value(fields["data"], converter=None)
    update = Session.update({**fields, "last_active": now, "version": Session.version + 1})
    return _by_id(update, session_id).returning(Session.version)


#: frozenset of changed fields -> its Prepared update (see ``write_changes``).
_change_statements = {}


def _filtered(
    query,
    agent_id=None,
    task_id=None,
    status=None,
    created_after=None,
    created_before=None,
    active_after=None,
    active_before=None,
    first_id=None,
    last_id=None,
    data=None,
):
    """Add the list filters that are given to ``query``.

    ``status`` is one status or a tuple of them; ``data`` a
    ``containment.DataFilter``.
    ``first_id``/``last_id``
    bound the ids to the ``created_at`` window (ids are time-ordered), so a
    window on the creation time is a range of an index ending in ``id``;
    ``created_at`` itself is compared too, so results never depend on it.
    The current scope's agents (scoping.py) always apply.
    """
    query = scoping.restrict(query, Session.agent_id)
    for field, value in (
        (Session.agent_id, agent_id),
        (Session.task_id, task_id),
        (Session.status, status),
    ):
        if isinstance(value, tuple):
            query = query.where(field.in_(value))
        elif value is not None:
            query = query.where(field == value)
    if data is not None:
        query = query.where(containment.condition(Session.data, data, database.obj))
    for condition, value in (
        (Session.created_at > created_after, created_after),
        (Session.created_at <= created_before, created_before),
        (Session.last_active > active_after, active_after),
        (Session.last_active <= active_before, active_before),
        (Session.id >= first_id, first_id),
        (Session.id <= last_id, last_id),
    ):
        if value is not None:
            query = query.where(condition)
    return query


def _with_id_bounds(filters):
    """Add the ids that bound a window on ``created_at`` to ``filters``."""
    bounds = {}
    if filters.get("created_after") is not None:
        bounds["first_id"] = first_session_id(filters["created_after"] + 1)
    if filters.get("created_before") is not None:
        bounds["last_id"] = last_session_id(filters["created_before"])
    return {**filters, **bounds}


def _sort_keys(sort, order):
    keys = (Session.id,) if sort == "created_at" else (Session.last_active, Session.id)
    return [key.desc() if order == "desc" else key.asc() for key in keys]


def _session_page_query(sort, order, limit, cursor_at=None, cursor_id=None, **filters):
    query = _filtered(Session.select(*_SUMMARY_FIELDS), **filters)
    if cursor_id is not None:
        after = (lambda a, b: a < b) if order == "desc" else (lambda a, b: a > b)
        if sort == "created_at":
            query = query.where(after(Session.id, cursor_id))
        else:
            query = query.where(
                after(Tuple(Session.last_active, Session.id), Tuple(cursor_at, cursor_id))
            )
    return query.order_by(*_sort_keys(sort, order)).limit(limit)


_session_pages = {
    (sort, order): Prepared(partial(_session_page_query, sort, order))
    for sort in SORTS
    for order in ORDERS
}


# ``data`` comes as the JSON text to store: the marker must reach the SQL unconverted.
# Unscoped: open() refused a session of another agent before it.
_store_session = Prepared(
    lambda data, **row: Session.insert(data=Value(data, converter=None), **row), unscoped=True
)


def _count_message_query(session_id, now):
    update = Session.update(
        message_count=Session.message_count + 1,
        version=Session.version + 1,
        last_active=now,
        status=Case(None, [(Session.status == CREATED, ACTIVE)], Session.status),
        status_changed_at=Case(None, [(Session.status == CREATED, now)], Session.status_changed_at),
    )
    return _by_id(update.where(Session.status.not_in(FINAL_STATUSES)), session_id).returning(
        Session.message_count,
        Session.agent_id,
        Session.task_id,
        Session.status,
        Session.version,
    )


_count_message = Prepared(_count_message_query)

# Unscoped: it runs only after _count_message found the session in scope.
_store_message = Prepared(
    lambda session_id, seq, message_id, role, content, timestamp: Message.insert(
        session=session_id,
        seq=seq,
        message_id=message_id,
        role=role,
        content=content,
        timestamp=timestamp,
    ),
    unscoped=True,
)


def _message_page_query(order, session_id, limit, cursor=None):
    query = Message.select(
        Message.message_id,
        Message.session.alias("session_id"),
        Message.role,
        Message.content,
        Message.seq,
        Message.timestamp,
    ).where(Message.session == session_id)
    if scoping.current() is not None:
        # The session's agent, in the same statement: no query of its own.
        query = query.where(Message.session.in_(_by_id(Session.select(Session.id), session_id)))
    if order == "asc":
        if cursor is not None:
            query = query.where(Message.seq > cursor)
        return query.order_by(Message.seq).limit(limit)
    if cursor is not None:
        query = query.where(Message.seq < cursor)
    return query.order_by(Message.seq.desc()).limit(limit)


_message_pages = {order: Prepared(partial(_message_page_query, order)) for order in ORDERS}
