"""Waiting for changes: long polls, a session's messages, streams; one loop follows the feed."""

import logging
import time

from peewee import OperationalError

from .. import scoping
from ..db import connected
from ..storage_errors import CursorGone, SessionNotFound, WaitingFull
from . import hub, kinds, reading, recording
from .reading import marks, position

# The name these lines have always been logged under (log filters may use it).
logger = logging.getLogger("sessions_app.feed")


def committed(seq=None):
    """Wake the waiters of a write that just committed (on PostgreSQL, of every host).

    ``record`` has it called after each commit that recorded a change, with
    the change's seq when it has one already (SQLite).
    """
    current_hub().announce(seq)


def read(cursor=None, limit=100, wait=0, gone=None, **filters):
    """Return ``(changes, next_position)`` after ``cursor``, waiting up to ``wait`` seconds.

    With nothing to return at once, the request waits for a matching change
    holding a waiting slot, not a database connection.
    """
    with connected():
        # One read of where the feed stands, for the cursor and the page alike.
        stands = marks()
        after = position(cursor, stands=stands)
        found, through = reading.page(after, limit, stands=stands, **filters)
    if found or not wait:
        return found, through
    with _Waiter(POLL, filters) as waiter:
        for found, reached in waiter.follow(through, time.monotonic() + wait, gone, limit):
            through = reached
            if found:
                break
    return found, through


def wait_for_session(session_id, read_page, wait, gone=None):
    """Return ``read_page()``; when it is empty, wait up to ``wait`` seconds for a message.

    Raises ``SessionNotFound`` when the session is deleted meanwhile.
    """
    if not wait:
        return read_page()
    # Where the feed stands before the read: a message committed after it wakes the wait.
    with connected():
        start = marks()[0]
    rows = read_page()
    if rows:
        return rows
    types = (kinds.MESSAGE_CREATED, kinds.SESSION_DELETED)
    filters = {"session_id": session_id, "types": types}
    with _Waiter(POLL, filters) as waiter:
        for found, _through in waiter.follow(start, time.monotonic() + wait, gone):
            if any(c["type"] == kinds.SESSION_DELETED for c in found):
                raise SessionNotFound(session_id)
            if found:
                rows = read_page()
                if rows:
                    break
    return rows


class Follower:
    """A stream's source: the matching changes after a position, as they are committed.

    Made before the response starts, so a bad position (410, 422) or a full
    house (503) is answered at once.  Iterating yields each change, and the
    position read up to (an int) when ``heartbeat`` seconds passed without
    one, until ``max_seconds``; it ends early when the changes it would send
    next were removed by retention, or when it fell ``backlog`` changes
    behind: the client resumes from the last change it got.  ``after`` is
    the position read up to: once the changes of a batch are all yielded,
    it is past each of them and past no change not yielded.
    """

    def __init__(self, cursor, heartbeat, max_seconds, name="cursor", gone=None, **filters):
        with connected():
            self.after = position(cursor, name)
        self.heartbeat = heartbeat
        self.end = time.monotonic() + max_seconds
        self.gone = gone
        self.waiter = _Waiter(STREAM, filters)

    def __iter__(self):
        batches = self.waiter.follow(
            self.after, self.end, self.gone, _STREAM_BATCH, idle=self.heartbeat
        )
        try:
            for found, through in batches:
                self.after = through
                yield from found if found else (through,)
        except CursorGone:
            # Retention removed what comes next: end here, so that the
            # client's reconnect (from its Last-Event-ID) gets the 410.
            logger.info("Ended a stream at %d: the changes after it were removed", self.after)
        except OperationalError as exc:
            logger.warning("Ended a stream at %d: the feed cannot be read (%s)", self.after, exc)

    def close(self):
        """Give the waiting slot back."""
        self.waiter.close()


_STREAM_BATCH = 1000
POLL, STREAM = "poll", "stream"


def _never():
    return False


class _Waiter:
    """A waiting slot at this process's hub, and the one loop that follows the feed with it.

    ``with _Waiter(kind, filters) as waiter`` gives the slot back at the end.
    """

    def __init__(self, kind, filters):
        self.filters = filters
        # A stream is read after its request has ended: keep the request's scope.
        self.scope = scoping.current()
        self.hub = current_hub()
        settings = self.hub.settings
        try:
            self.subscription = self.hub.subscribe(
                reading.matcher(**filters),
                settings["FEED_WAITERS_MAX"],
                kind,
                settings["STREAM_BACKLOG_MAX"],
            )
        except hub.Full:
            raise WaitingFull(kind) from None

    def follow(self, after, until, gone=None, limit=_STREAM_BATCH, idle=None):
        """Yield ``(changes, through)``: batches of matching changes after ``after``, as they come.

        A batch holds at most ``limit`` changes.

        Each batch continues where the one before it ended, and ``through``
        is past every change looked at.  With ``idle``, an empty batch comes
        after each ``idle`` seconds without a change.  When ``until`` (a
        ``time.monotonic()``) passes or the client has ``gone``, a last
        batch hands over what the hub has given meanwhile: the position a
        caller ends at never lies past a change it did not return.  Raises
        ``CursorGone`` when catching up finds the changes after ``after``
        removed.
        """
        gone = gone or _never
        subscription, following = self.subscription, False
        quiet_until = time.monotonic() + idle if idle else until
        while True:
            now = time.monotonic()
            if now >= until or gone():
                yield (subscription.take(limit) if following else ([], after))
                return
            if not following:
                following = subscription.follow(after)
                if not following:
                    # The hub is past ``after``: read what it has handed out.
                    with self.hub.readers.connection_context(), scoping.using(self.scope):
                        found, after = reading.page(
                            after, limit, db=self.hub.readers, **self.filters
                        )
                    if found:
                        yield found, after
                        quiet_until = time.monotonic() + idle if idle else until
                    continue
            timeout = min(quiet_until, until) - now
            subscription.wait(max(0, min(timeout, hub.CLIENT_CHECK_INTERVAL)))
            found, after = subscription.take(limit)
            if found or time.monotonic() >= quiet_until:
                yield found, after
                quiet_until = time.monotonic() + idle if idle else until
            if subscription.overflowed and not subscription.pending:
                logger.info(
                    "A waiter fell behind (its backlog, or retention): ended it at %d", after
                )
                return

    def close(self):
        """Give the slot back."""
        self.subscription.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def current_hub():
    """Return this process's hub for the bound database (``hub.hub``), made on first use."""
    return hub.hub(reading.after, reading.newest, recording.publish)
