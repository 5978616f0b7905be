"""The feed's retention step: changes older than ``CHANGES_RETENTION_SECONDS`` removed, in order."""

import logging
import time

from peewee import Case

from .. import metrics
from ..db import database
from ..timefmt import now_us
from .tables import Change, FeedMark

# The name these lines have always been logged under (log filters may use it).
logger = logging.getLogger("sessions_app.feed")


def prune_changes(before, rest=None):
    """Remove the changes recorded before ``before``, batch by batch; return how many.

    ``rest(took)``: as ``remove_older_than`` takes it (prune's pause between batches).
    """
    removed = remove_older_than(before, rest=rest)
    metrics.PRUNED.labels("changes").inc(removed)
    return removed


def count_older_than(cutoff_us):
    """Return how many changes ``remove_older_than(cutoff_us)`` would remove now."""
    with database.connection_context():
        query = Change.select().where(Change.at < cutoff_us)
        first_kept = _first_kept(cutoff_us)
        if first_kept is not None:
            query = query.where(Change.seq < first_kept)
        return query.count()


def _first_kept(cutoff_us):
    """Return the lowest seq recorded at or after ``cutoff_us``, None if there is none."""
    row = (
        Change.select(Change.seq)
        .where(Change.at >= cutoff_us)
        .order_by(Change.seq)
        .limit(1)
        .tuples()
        .first()
    )
    return row[0] if row else None


def remove_older_than(cutoff_us, batch=1000, rest=None):
    """Delete the changes recorded before ``cutoff_us``, oldest seq first; return how many.

    A change's ``at`` is read before its writer's turn to append, so a later
    seq may hold an earlier ``at``: removal goes in seq order and stops at the
    first change it keeps, so no kept change ever lies below the mark (which
    would make it unreachable, and a cursor before it a 410).  Each batch of
    ``batch`` is one transaction, which also raises the mark; ``rest(took)``,
    if given, is called after each full batch with the seconds it took (prune
    pauses there, so that the service's writers get their turns).
    """
    removed, through = 0, 0
    with database.connection_context():
        while True:
            started = time.monotonic()
            with database.atomic():
                rows = (
                    Change.select(Change.seq, Change.at)
                    .where(Change.seq > through)
                    .order_by(Change.seq)
                    .limit(batch)
                    .tuples()
                )
                seqs = []
                for seq, at in rows:
                    if at >= cutoff_us:
                        break
                    seqs.append(seq)
                if seqs:
                    Change.delete().where(
                        (Change.seq > through) & (Change.seq <= seqs[-1])
                    ).execute()
                    _raise_mark(seqs[-1])
            removed += len(seqs)
            if len(seqs) < batch:
                break
            through = seqs[-1]
            if rest is not None:
                rest(time.monotonic() - started)
    if removed:
        logger.info("Removed %d changes recorded before %d", removed, cutoff_us)
    return removed


def _raise_mark(seq):
    higher = Case(None, [(FeedMark.removed_through < seq, seq)], FeedMark.removed_through)
    (
        FeedMark.insert(id=1, removed_through=seq)
        .on_conflict(conflict_target=[FeedMark.id], update={FeedMark.removed_through: higher})
        .execute()
    )


def retention_cutoff(retention_seconds, now=None):
    """Return the instant (epoch microseconds) before which changes may be removed."""
    return (now_us() if now is None else now) - retention_seconds * 1_000_000
