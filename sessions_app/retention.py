"""Retention: ``flask --app sessions_app prune`` deletes what is kept no longer.

A session that is ``completed`` or ``failed`` and whose ``last_active`` is
older than ``SESSION_RETENTION_SECONDS`` is deleted with its messages.  Each
batch is one short transaction (one ``DELETE``, whose cascade takes the
messages), so the service's own writes wait at most one batch for it; the
``DELETE`` checks the expiry again, so a session changed since it was picked
stays.  Until its batch commits a session is listed, counted and readable as
usual; from then on it is gone from every endpoint at once.

``Totals`` and ``prune`` hold one step per kind of row; the forgetting of
idempotency keys and changes past their windows (sections 5 and 7) joins
them as steps of their own where those tables exist.
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

from . import metrics
from .db import database, describe
from .models import Session
from .states import FINAL_STATUSES
from .timefmt import format_us, now_us

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 200
#: Pause between batches, so the service's writers queue behind one batch at a time.
DEFAULT_PAUSE = 0.005


@dataclass
class Totals:
    """What a prune deleted (or, dry, would delete)."""

    sessions: int = 0
    messages: int = 0

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


def delete_expired_batch(cutoff, size):
    """Delete up to ``size`` expired sessions and their messages, in one transaction.

    Return the deleted sessions (``id``, ``agent_id``, ``task_id``,
    ``status``, ``message_count``).  Each batch's deletion goes through here
    and only here: a session's ``session.deleted`` tombstone (reason
    ``expired``, contract section 7) is to be recorded inside this
    transaction, from these rows.
    """
    batch = Session.select(Session.id).where(_expired(cutoff)).limit(size)
    # The expiry is checked again on the rows themselves: on PostgreSQL a
    # row changed after the subquery read it is re-read before it is deleted.
    query = (
        Session.delete()
        .where(Session.id.in_(batch) & _expired(cutoff))
        .returning(
            Session.id, Session.agent_id, Session.task_id, Session.status, Session.message_count
        )
    )
    with database.atomic():
        return list(query.dicts().execute())


def prune_sessions(retention_seconds, batch=DEFAULT_BATCH, pause=DEFAULT_PAUSE, now=None):
    """Delete every session expired at ``now``, batch by batch; return the ``Totals``."""
    cutoff = (now_us() if now is None else now) - retention_seconds * 1_000_000
    totals = Totals()
    while True:
        deleted = delete_expired_batch(cutoff, batch)
        if not deleted:
            return totals
        done = Totals(len(deleted), sum(row["message_count"] for row in deleted))
        totals.add(done)
        metrics.PRUNED.labels("sessions").inc(done.sessions)
        metrics.PRUNED.labels("messages").inc(done.messages)
        logger.info(
            "Pruned a batch of %d sessions (%d messages); %s so far",
            done.sessions,
            done.messages,
            totals.describe(),
        )
        if len(deleted) < batch:
            return totals
        time.sleep(pause)


def prune(config, dry_run=False, batch=DEFAULT_BATCH, pause=DEFAULT_PAUSE, now=None):
    """Delete (or with ``dry_run`` count) everything past its retention; return the ``Totals``."""
    retention = config["SESSION_RETENTION_SECONDS"]
    if retention is None:
        logger.info("SESSION_RETENTION_SECONDS is not set: no session expires")
        return Totals()
    now = now_us() if now is None else now
    cutoff = now - retention * 1_000_000
    if dry_run:
        totals = count_expired(cutoff)
        logger.info(
            "Dry run: would prune %s (final, last active before %s)",
            totals.describe(),
            format_us(cutoff),
        )
        return totals
    logger.info("Pruning sessions final and last active before %s", format_us(cutoff))
    totals = prune_sessions(retention, batch, pause, now)
    logger.info("Pruned %s", totals.describe())
    return totals


@click.command("prune")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option(
    "--batch",
    type=click.IntRange(1, 10_000),
    default=DEFAULT_BATCH,
    show_default=True,
    help="Sessions deleted per transaction.",
)
@with_appcontext
def prune_command(dry_run, batch):
    """Delete the sessions past SESSION_RETENTION_SECONDS, with their messages."""
    _count_metrics_as_prune()
    try:
        with database.connection_context():
            totals = prune(current_app.config, dry_run=dry_run, batch=batch)
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
