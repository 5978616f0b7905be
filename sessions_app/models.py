"""Sessions and their messages, and the writes that own their transactions."""

import json
import logging

from peewee import (
    SQL,
    BigIntegerField,
    Case,
    CharField,
    CompositeKey,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)

from . import changes, feed, jsonio, metrics
from .db import database
from .errors import SessionNotFound, StatusConflict
from .ids import new_message_id, new_session_id
from .merge_patch import merge_patch
from .prepared import Prepared
from .states import ACTIVE, CREATED, FINAL_STATUSES, MESSAGE_STATUS, can_move
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


class BaseModel(Model):
    class Meta:
        database = database


class Session(BaseModel):
    """An agent's session.

    Ids are time-ordered, so the primary key is also the creation order; each
    list filter has an index ending in ``id`` so that a page is one range scan.
    """

    id = CharField(primary_key=True, max_length=40)
    agent_id = CharField(max_length=255)
    task_id = CharField(max_length=255, null=True)
    status = CharField(max_length=16)
    prompt = TextField(null=True)
    data = JSONTextField()
    created_at = BigIntegerField()
    last_active = BigIntegerField()
    message_count = IntegerField()
    # Raised by one in the statement of every write that changes the session.
    version = IntegerField(default=1, constraints=[SQL("DEFAULT 1")])

    class Meta:
        table_name = "sessions"
        indexes = (
            (("agent_id", "status", "id"), False),
            (("agent_id", "id"), False),
            (("task_id", "id"), False),
            (("status", "id"), False),
        )

    @classmethod
    def open(cls, agent_id, task_id=None, prompt=None, data=None):
        """Store a new session and return it as a dict."""
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
            "message_count": 0,
            "version": 1,
        }
        # Writers take turns (db.WriterQueue), so the SQL is made before the
        # transaction: every writer queued behind this one would wait for it.
        sql, params = cls.insert(row).sql()
        with database.atomic():
            database.execute_sql(sql, params)
            feed.record(changes.SESSION_CREATED, row, now)
        feed.committed()
        logger.info("Created session %s for agent %s", row["id"], agent_id)
        return row

    @classmethod
    def fetch(cls, session_id):
        """Return the session as a dict, or raise ``SessionNotFound``."""
        rows = _session_by_id.rows(session_id=session_id)
        if not rows:
            raise SessionNotFound(session_id)
        return rows[0]

    @classmethod
    def page(cls, limit, cursor=None, agent_id=None, task_id=None, status=None):
        """Return up to ``limit + 1`` summaries, newest first, after ``cursor``."""
        if not status or len(status) == 1:
            return _session_page.rows(
                limit=limit + 1,
                agent_id=agent_id,
                task_id=task_id,
                cursor=cursor,
                status=status[0] if status else None,
            )
        fields = (
            cls.id,
            cls.agent_id,
            cls.task_id,
            cls.status,
            cls.created_at,
            cls.last_active,
            cls.message_count,
        )
        query = cls.select(*fields)
        for field, value in ((cls.agent_id, agent_id), (cls.task_id, task_id), (cls.id, cursor)):
            if value is not None:
                query = query.where(field < value if field is cls.id else field == value)
        # One range scan per status on (…, status, id), merged; an IN list
        # would read every matching row and sort them all.
        parts = [
            query.where(cls.status == s).order_by(cls.id.desc()).limit(limit + 1) for s in status
        ]
        union = parts[0]
        for part in parts[1:]:
            union = union + part
        return list(union.order_by(cls.id.desc()).limit(limit + 1).dicts())

    @classmethod
    def change(cls, session_id, patch):
        """Apply a validated PATCH body and return the session after it.

        The row is locked while the new values are worked out, so concurrent
        PATCHes of one session apply one after the other.  Only a change of a
        stored value moves ``last_active``.
        """
        with database.atomic():
            query = cls.select().where(cls.id == session_id)
            if database.for_update:
                query = query.for_update()
            row = query.dicts().first()
            if row is None:
                raise SessionNotFound(session_id)
            changed = _changes(row, patch)
            if changed:
                now = now_us()
                update = cls.update({**changed, "last_active": now, "version": cls.version + 1})
                query = update.where(cls.id == session_id).returning(cls.version)
                version = list(query.tuples().execute())[0][0]
                fields = [name for name in changes.UPDATABLE if name in changed]
                row.update(changed, last_active=now, version=version)
                feed.record(changes.SESSION_UPDATED, row, now, changed=fields)
        if changed:
            feed.committed()
            logger.info("Updated session %s: %s", session_id, ", ".join(fields))
        return row

    @classmethod
    def remove(cls, session_id):
        """Delete the session and its messages, or raise ``SessionNotFound``."""
        with database.atomic():
            query = cls.delete().where(cls.id == session_id).returning(*_TOMBSTONE_FIELDS)
            deleted = list(query.dicts().execute())
            if not deleted:
                raise SessionNotFound(session_id)
            last = deleted[0]
            tombstone = {**last, "id": session_id}
            feed.record(changes.SESSION_DELETED, tombstone, now_us(), reason=changes.DELETED)
        feed.committed()
        logger.info("Deleted session %s (%d messages)", session_id, last["message_count"])


_TOMBSTONE_FIELDS = (
    Session.agent_id,
    Session.task_id,
    Session.status,
    Session.version,
    Session.message_count,
)


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

    session = ForeignKeyField(Session, column_name="session_id", on_delete="CASCADE")
    seq = IntegerField()
    message_id = CharField(max_length=40)
    role = CharField(max_length=16)
    content = TextField()
    timestamp = BigIntegerField()

    class Meta:
        table_name = "messages"
        primary_key = CompositeKey("session", "seq")

    @classmethod
    def send(cls, session_id, content, role):
        """Store a message and count it on its session, in one transaction."""
        with database.atomic():
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
            feed.record(changes.MESSAGE_CREATED, session, now, message_id=message_id, role=role)
        feed.committed()
        metrics.MESSAGES_STORED.labels(role).inc()
        return {
            "message_id": message_id,
            "session_id": session_id,
            "status": MESSAGE_STATUS,
            "timestamp": now,
        }

    @classmethod
    def page(cls, session_id, limit, after=0):
        """Return up to ``limit + 1`` messages of a session, oldest first."""
        rows = _message_page.rows(session_id=session_id, after=after, limit=limit + 1)
        if not rows and not Session.select().where(Session.id == session_id).exists():
            raise SessionNotFound(session_id)
        return rows


def _refuse_message(session_id):
    status = Session.select(Session.status).where(Session.id == session_id).scalar()
    if status is None:
        raise SessionNotFound(session_id)
    raise StatusConflict(status, message=True)


# -- the hot statements, generated once per database (see prepared.py) -------

_session_by_id = Prepared(
    lambda session_id: Session.select().where(Session.id == session_id),
    convert={"data": Session.data.python_value},
)


def _session_page_query(limit, agent_id=None, task_id=None, cursor=None, status=None):
    query = Session.select(
        Session.id,
        Session.agent_id,
        Session.task_id,
        Session.status,
        Session.created_at,
        Session.last_active,
        Session.message_count,
    )
    for field, value in (
        (Session.agent_id, agent_id),
        (Session.task_id, task_id),
        (Session.status, status),
    ):
        if value is not None:
            query = query.where(field == value)
    if cursor is not None:
        query = query.where(Session.id < cursor)
    return query.order_by(Session.id.desc()).limit(limit)


_session_page = Prepared(_session_page_query)

_count_message = Prepared(
    lambda session_id, now: (
        Session.update(
            message_count=Session.message_count + 1,
            last_active=now,
            status=Case(None, [(Session.status == CREATED, ACTIVE)], Session.status),
            version=Session.version + 1,
        )
        .where((Session.id == session_id) & Session.status.not_in(FINAL_STATUSES))
        .returning(
            Session.message_count,
            Session.agent_id,
            Session.task_id,
            Session.status,
            Session.version,
        )
    )
)

_store_message = Prepared(
    lambda session_id, seq, message_id, role, content, timestamp: Message.insert(
        session=session_id,
        seq=seq,
        message_id=message_id,
        role=role,
        content=content,
        timestamp=timestamp,
    )
)

_message_page = Prepared(
    lambda session_id, after, limit: (
        Message.select(
            Message.message_id,
            Message.session.alias("session_id"),
            Message.role,
            Message.content,
            Message.seq,
            Message.timestamp,
        )
        .where((Message.session == session_id) & (Message.seq > after))
        .order_by(Message.seq)
        .limit(limit)
    )
)

MODELS = (Session, Message, *feed.MODELS)
