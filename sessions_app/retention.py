"""Retention: ``flask --app sessions_app prune`` deletes what is kept no longer.

A session that is ``completed`` or ``failed`` and whose ``last_active`` is
older than ``SESSION_RETENTION_SECONDS`` is deleted with its messages.  Each
batch is one short transaction (one ``DELETE``, whose cascade takes the
messages), followed by a pause twice as long, so the service's own writes
wait at most one short batch for it; the ``DELETE`` checks the expiry again,
so a session changed since it was picked stays.  Until its batch commits a
session is listed, counted and readable as usual; from then on it is gone
from every endpoint at once.

Each expired session leaves its ``session.deleted`` tombstone (reason
``expired``) in the change feed, recorded in the transaction that deletes
it.  Idempotency keys older than ``IDEMPOTENCY_TTL_SECONDS`` and changes
older than ``CHANGES_RETENTION_SECONDS`` are removed the same way, a small
batch at a time.  ``Totals`` and ``prune`` hold one step per kind of row.
"""

import logging
import os
import time
from dataclasses import dataclass, fields

import click
from flask import current_app
from flask.cli import with_appcontext
from peewee import SQL, fn
from prometheus_client import values

from . import feed, idempotency_keys, metrics
from .db import database, describe
from .feed import kinds
from .models import TOMBSTONE_FIELDS, Session
from .states import FINAL_STATUSES
from .timefmt import format_us, now_us

logger = logging.getLogger(__name__)

#: A batch takes up to this many sessions, and fewer when their messages
#: would pass DEFAULT_BATCH_MESSAGES (a session with more is a batch alone):
#: a transaction's length goes with the rows it deletes.
DEFAULT_BATCH = 100
DEFAULT_BATCH_MESSAGES = 500
#: After each batch prune waits twice as long as the batch took (5 ms at
#: least), so it holds the database (SQLite's write lock, the CPU, the disk)
#: a third of the time at most and the service's writers take turns between.
PAUSE_RATIO = 2
MIN_PAUSE = 0.005


@dataclass
class Totals:
    """What a prune deleted (or, dry, would delete)."""

    sessions: int = 0
    messages: int = 0
    keys: int = 0
    changes: int = 0

    def add(self, other):
        for field in fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def describe(self):
        return ", ".join(f"{getattr(self, f.name):,} {f.name}" for f in fields(self))


def _expired(cutoff):
    return Session.status.in_(FINAL_STATUSES) & (Session.last_active < cutoff)


def count_expired(cutoff):
    """Return the ``Totals`` of the sessions expired at ``cutoff`` and their messages."""
    query = Session.select(fn.COUNT(SQL("*")), fn.COALESCE(fn.SUM(Session.message_count), 0))
    sessions, messages = query.where(_expired(cutoff)).tuples().get()
    return Totals(sessions=sessions, messages=int(messages))


def next_batch(cutoff, size=DEFAULT_BATCH, messages=DEFAULT_BATCH_MESSAGES):
    """Return the ids of the next expired sessions to delete together."""
    rows = Session.select(Session.id, Session.message_count).where(_expired(cutoff)).limit(size)
    ids, total = [], 0
    for session_id, count in rows.tuples():
        if ids and total + count > messages:
            break
        ids.append(session_id)
        total += count
    return ids


def delete_expired(cutoff, ids):
    """Delete those of the sessions ``ids`` still expired, with their messages, in one transaction.

    Return the deleted sessions (``id`` and ``models.TOMBSTONE_FIELDS``), whose
    ``session.deleted`` tombstones (reason ``expired``) are recorded in the same transaction.
    """
    # The expiry is checked again in the DELETE: a session changed since it
    # was picked (a PATCH of its data moves last_active) stays.
    query = (
        Session.delete()
        .where(Session.id.in_(ids) & _expired(cutoff))
        .returning(Session.id, *TOMBSTONE_FIELDS)
    )
    with database.atomic():
        deleted = list(query.dicts().execute())
        now = now_us()
        for row in deleted:
            feed.record(kinds.SESSION_DELETED, row, now, reason=kinds.EXPIRED)
    return deleted


def prune_sessions(
    cutoff,
    batch=DEFAULT_BATCH,
    batch_messages=DEFAULT_BATCH_MESSAGES,
    pause=MIN_PAUSE,
):
    """Delete every session expired at ``cutoff``, batch by batch; return the ``Totals``."""
    totals = Totals()
    while ids := next_batch(cutoff, batch, batch_messages):
        started = time.monotonic()
        deleted = delete_expired(cutoff, ids)
        took = time.monotonic() - started
        done = Totals(len(deleted), sum(row["message_count"] for row in deleted))
        totals.add(done)
        metrics.PRUNED.labels("sessions").inc(done.sessions)
        metrics.PRUNED.labels("messages").inc(done.messages)
        logger.info(
            "Pruned a batch of %d sessions (%d messages) in %.1f ms;"
            " %d sessions, %d messages so far",
            done.sessions,
            done.messages,
            took * 1000,
            totals.sessions,
            totals.messages,
        )
        _rest(pause, took)
    return totals


def prune_keys(before, pause=MIN_PAUSE):
    """Forget every idempotency key stored before ``before``, batch by batch; return how many."""
    total = 0
    while True:
        started = time.monotonic()
        deleted = idempotency_keys.forget_expired(before)
        if not deleted:
            return total
        total += deleted
        metrics.PRUNED.labels("keys").inc(deleted)
        _rest(pause, time.monotonic() - started)


def _rest(pause, took):
    """Wait after a batch of ``took`` seconds: ``PAUSE_RATIO`` times as long, ``pause`` at least."""
    time.sleep(max(pause, took * PAUSE_RATIO))


def prune(config, dry_run=False, now=None, **batching):
    """Delete (or with ``dry_run`` count) everything past its retention; return the ``Totals``.

    ``batching``: ``batch``, ``batch_messages`` and ``pause``, as
    ``prune_sessions`` takes them.
    """
    now = now_us() if now is None else now
    totals = _prune_sessions(config["SESSION_RETENTION_SECONDS"], now, dry_run, **batching)
    keys_before = now - config["IDEMPOTENCY_TTL_SECONDS"] * 1_000_000
    changes_before = feed.retention_cutoff(config["CHANGES_RETENTION_SECONDS"], now)
    if dry_run:
        totals.keys = idempotency_keys.count_expired(keys_before)
        totals.changes = feed.count_older_than(changes_before)
        logger.info(
            "Dry run: would forget %d idempotency keys and %d changes", totals.keys, totals.changes
        )
    else:
        pause = batching.get("pause", MIN_PAUSE)
        totals.keys = prune_keys(keys_before, pause)
        totals.changes = feed.prune_changes(changes_before, rest=lambda took: _rest(pause, took))
        logger.info("Pruned %s", totals.describe())
    return totals


def _prune_sessions(retention, now, dry_run, **batching):
    if retention is None:
        logger.info("SESSION_RETENTION_SECONDS is not set: no session expires")
        return Totals()
    cutoff = now - retention * 1_000_000
    if dry_run:
        totals = count_expired(cutoff)
        logger.info(
            "Dry run: would prune %d sessions, %d messages (final, last active before %s)",
            totals.sessions,
            totals.messages,
            format_us(cutoff),
        )
        return totals
    logger.info("Pruning sessions final and last active before %s", format_us(cutoff))
    return prune_sessions(cutoff, **batching)


@click.command("prune")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option(
    "--batch",
    type=click.IntRange(1, 10_000),
    default=DEFAULT_BATCH,
    show_default=True,
    help="Most sessions deleted per transaction.",
)
@click.option(
    "--batch-messages",
    type=click.IntRange(1, 1_000_000),
    default=DEFAULT_BATCH_MESSAGES,
    show_default=True,
    help="Fewer sessions per transaction when their messages would pass this.",
)
@with_appcontext
def prune_command(dry_run, batch, batch_messages):
    """Delete the sessions past SESSION_RETENTION_SECONDS (with their messages) and old keys."""
    _count_metrics_as_prune()
    try:
        with database.connection_context():
            totals = prune(
                current_app.config, dry_run=dry_run, batch=batch, batch_messages=batch_messages
            )
    except Exception:
        metrics.PRUNE_RUNS.labels("error").inc()
        raise
    metrics.PRUNE_RUNS.labels("dry-run" if dry_run else "ok").inc()
    verb = "Would delete" if dry_run else "Deleted"
    click.echo(f"{verb} {totals.describe()} in {describe(database.obj)}.")


def _count_metrics_as_prune():
    """Keep the command's numbers in one file that every run adds to.

    Under Gunicorn, ``/metrics`` adds up the files in
    ``PROMETHEUS_MULTIPROC_DIR``, one per process id; a command run every
    five minutes would leave a new file each time.  All runs write to
    ``*_prune.db`` instead, so ``/metrics`` shows their running totals.
    """
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder is None:
        return
    if os.path.isdir(folder):
        values.ValueClass = values.MultiProcessValue(lambda: "prune")
    else:
        # The service is not running (its folder is made at start): nobody
        # would read the numbers, and the run itself must not fail for it.
        logger.warning("%s does not exist: this run's metrics are not kept", folder)
        values.ValueClass = values.MutexValue


def init_app(app):
    """Add the ``prune`` command to ``flask``."""
    app.cli.add_command(prune_command)
