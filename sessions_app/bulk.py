"""Changing many sessions at once (contract section 11): a status or a delete, by filter.

The sessions are found with the list's own filters (``models._filtered``),
oldest first, up to ``limit``; then changed in batches of at most
``BATCH`` sessions, each batch one short transaction.  A batch locks its
sessions that still match the filter and changes each exactly as its own
PATCH or DELETE would (``_changes``, ``write_changes``, ``delete_rows`` and
the feed's records of ``models.py``, which the single writes use too), so
each session is changed once, or skipped when the status table forbids its
move by then.  A batch writes in one statement and records its changes in
one round trip (``feed.record_many``), last, so the feed's append lock is
held that long only.  Between batches the bulk change rests as long as the
batch took times ``REST`` (more on SQLite, whose one write lock a batch
holds), so that single requests keep most of the database.

Only sessions the change applies to are found: for a status, those whose
status may move to it (not those already there, nor final ones); for a
delete, every match.  So a request repeated until ``remaining`` is 0 ends.
"""

import logging
import time

from peewee import SQL, SqliteDatabase, fn

from .db import connected, database
from .models import (
    Session,
    _changes,
    _filtered,
    _locked,
    _with_id_bounds,
    delete_rows,
    record_tombstones,
    record_updates,
    write_changes,
)
from .states import STATUSES, can_move
from .storage_errors import StatusConflict
from .timefmt import now_us

logger = logging.getLogger(__name__)

#: Sessions per transaction, at most.
BATCH = 100
#: Rest after a batch, as a multiple of the time it took, by database.  A
#: batch holds SQLite's one write lock while it runs: resting three times as
#: long leaves single writes three quarters of the database's time (resting
#: as long, half: writers kept 0.54 to 0.67 of their throughput in the
#: bench).  On PostgreSQL a batch locks only its own rows, so writers of
#: other sessions go on meanwhile and resting as long is enough.
REST = {"sqlite": 3.0, "postgresql": 1.0}

_FIELDS = (
    Session.id,
    Session.agent_id,
    Session.task_id,
    Session.status,
    Session.version,
    Session.message_count,
)


def _statuses(filters, status):
    """Return the statuses the change applies to, within the filter's."""
    wanted = filters.get("status") or STATUSES
    if status is None:
        return tuple(wanted)
    return tuple(s for s in wanted if s != status and can_move(s, status))


@connected()
def apply(filters, status=None, delete=False, dry_run=False, limit=1000, pause=None):
    """Set ``status`` on, or ``delete``, up to ``limit`` sessions matching ``filters``.

    Return the answer of section 11: ``matched``, ``changed``,
    ``skipped`` (``conflict``), ``remaining`` and ``dry_run`` (and
    ``by_status`` on a dry run).  ``pause`` (tests) is called between
    finding the sessions and changing them.
    """
    asked = _with_id_bounds(filters)
    statuses = _statuses(filters, status)
    filters = {**asked, "status": statuses}
    found = _find(filters, limit) if statuses else []
    result = {"matched": len(found), "changed": 0, "skipped": {"conflict": 0}, "dry_run": dry_run}
    if dry_run:
        result["by_status"] = dict.fromkeys(STATUSES, 0)
        for row in found:
            result["by_status"][row["status"]] += 1
        result["remaining"] = (_count(filters) - len(found)) if statuses else 0
        return result
    if pause is not None:
        pause()
    rest = REST["sqlite" if isinstance(database.obj, SqliteDatabase) else "postgresql"]
    for start in range(0, len(found), BATCH):
        began = time.monotonic()
        ids = [row["id"] for row in found[start : start + BATCH]]
        changed, conflicts = _batch(ids, asked, status, delete)
        result["changed"] += changed
        result["skipped"]["conflict"] += conflicts
        time.sleep((time.monotonic() - began) * rest)
    result["remaining"] = _count(filters) if statuses else 0
    what = "deleted" if delete else f"set to {status}"
    logger.info(
        "Bulk change: %d of %d sessions %s, %d skipped (conflict), %d remaining",
        result["changed"],
        result["matched"],
        what,
        result["skipped"]["conflict"],
        result["remaining"],
    )
    return result


def _find(filters, limit):
    query = _filtered(Session.select(Session.id, Session.status), **filters)
    return list(query.order_by(Session.id).limit(limit).dicts())


def _count(filters):
    return _filtered(Session.select(fn.COUNT(SQL("*"))), **filters).scalar()


def _batch(ids, filters, status, delete):
    """Change the sessions ``ids`` still matching ``filters``, in one transaction; return counts.

    ``filters`` are the request's own: a session changed since it was found
    is judged as it is now, and one whose move the table forbids by now is
    a conflict.
    """
    conflicts, moving = 0, []
    with database.atomic():
        now = now_us()
        query = _filtered(Session.select(*_FIELDS).where(Session.id.in_(ids)), **filters)
        rows = list(_locked(query.order_by(Session.id)))
        if delete:
            tombstones = delete_rows([row["id"] for row in rows]) if rows else []
            record_tombstones(tombstones, now)
            return len(tombstones), 0
        for row in rows:
            try:
                if _changes(row, {"status": status}):
                    moving.append(row)
            except StatusConflict:
                conflicts += 1
        if moving:
            fields = write_changes(moving, {"status": status}, now)
            record_updates(moving, fields, now)
    return len(moving), conflicts
