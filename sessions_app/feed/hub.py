"""Waiting for changes: one watcher per worker process, and bounded slots for the waiters.

A waiting request (a long poll, an open stream) holds no database connection
and asks the database nothing while it waits.  Each worker process has one
``Hub``: a watcher thread reads the changes committed since it last looked,
once for all of the process's waiters, and hands each waiter the ones that
match its filters; a waiter whose filters match nothing is never woken.

How the watcher learns that something was committed:

- PostgreSQL: it ``LISTEN``s on ``CHANNEL`` on a connection of its own (one
  per worker), so a write through any worker of any host wakes it.  A
  writer's change waits in a queue until a publishing pass gives it its seq
  (``recording.py`` says why): after COMMIT the writer ``announce()``s, and one
  publisher thread per worker runs a pass for all the commits announced
  since its last one, with a single ``NOTIFY`` (a notifying commit takes an
  instance-wide lock, so writers never notify themselves) whose payload is
  the pass's newest seq: a watcher with no follower moves its horizon there
  without reading the feed (it reads it for an empty payload, as earlier
  releases sent).  The watcher
  also looks every ``SAFETY_INTERVAL`` seconds, in case a notification was
  lost with a broken connection, and then has a pass run for changes a
  host that died left in the queue.
- SQLite: one host, so the watcher looks every ``POLL_INTERVAL`` seconds
  while the process has waiters, reading the feed's newest changes only when
  SQLite's ``data_version`` says another connection committed, and at once
  when a write of its own process announces itself.

Capacity is counted in slots per process: a request that would need one
when all are taken gets a 503 with ``Retry-After`` at once.
"""

import atexit
import logging
import os
import select
import socket
import sys
import threading
import weakref

import psycopg
from peewee import OperationalError, PostgresqlDatabase, SqliteDatabase
from playhouse.pool import PooledSqliteDatabase

from .. import metrics
from ..db import database
from ..deadlines import BoundedPooledPsycopg3Database, BoundedPsycopg3Database

# The name these lines have always been logged under (log filters may use it).
logger = logging.getLogger("sessions_app.waiting")

CHANNEL = "sessions_changes"
#: SQLite: how often the watcher of a process with waiters looks for new changes.
POLL_INTERVAL = 0.01
#: SQLite: how long a watcher with no follower sleeps (a follower wakes it).
IDLE_INTERVAL = 1.0
#: PostgreSQL: how often the watcher looks even without a notification.
SAFETY_INTERVAL = 1.0
#: PostgreSQL: how long a writer waits, at most, for its change to be published.
PUBLISH_TIMEOUT = 2.0
#: How often a waiting request checks that its client is still there.
CLIENT_CHECK_INTERVAL = 1.0
_BATCH = 1000
#: Connections per process for the waiters' reads (see ``Hub.readers``).
READERS = 2


class Full(Exception):
    """Every waiting slot of this process is taken."""


class Subscription:
    """A waiter's place at the hub: the matching changes handed to it, and its slot.

    At most ``backlog`` changes wait in it to be taken: a waiter that falls
    further behind (a stream whose client stops reading) is ``overflowed``
    and is offered nothing more, so its memory stays bounded; what it holds
    ends at a change it was handed, and the waiter goes on from there
    (a stream ends, its client resumes from the database).  A waiter whose
    changes retention removed before the watcher read them is ended so too
    (``Hub._cut_off``).
    """

    def __init__(self, hub, match, kind, backlog):
        self.hub = hub
        self.match = match
        # ("session_id", value), ("agent_id", value) or None: where the hub files it.
        self.key = getattr(match, "key", None)
        self.kind = kind
        self.backlog = backlog
        self.after = None
        self.pending = []
        self.overflowed = False
        self._ready = threading.Event()

    def follow(self, after):
        """Wait for changes after ``after``; False when the hub is past it already.

        The hub hands out each change once, to the subscriptions it has at
        that moment; a position it has already passed must be read from the
        database (the caller does, then follows again).
        """
        with self.hub.lock:
            if after < self.hub.horizon:
                return False
            self.after = after
            self.pending = []
            self._ready.clear()
            self.hub.follow(self)
        return True

    def wait(self, timeout):
        """Wait up to ``timeout`` seconds for a matching change; True when there is one."""
        return self._ready.wait(timeout)

    def take(self, limit=None):
        """Return ``(changes, through)``: the matching changes handed over, and the position.

        ``through`` is where the next read continues: past every change the
        hub looked at for this subscription, or the last change returned
        when ``limit`` cut the list short (the rest stay to be taken) or the
        subscription overflowed.
        """
        with self.hub.lock:
            changes, self.pending = self.pending, []
            if limit is not None and len(changes) > limit:
                changes, self.pending = changes[:limit], changes[limit:]
                through = changes[-1]["seq"]
            elif self.overflowed:
                through = changes[-1]["seq"] if changes else self.after
            else:
                # Following, it has been offered every change up to the horizon.
                through = max(self.after, self.hub.horizon)
            if not self.pending:
                self._ready.clear()
            self.after = through
        return changes, through

    def close(self):
        """Give the slot back; a second call does nothing."""
        self.hub.release(self)

    def _offer(self, change):
        """Hand over ``change`` (under the hub's lock); False once the backlog is full."""
        if len(self.pending) >= self.backlog:
            self.overflowed = True
            return False
        self.pending.append(change)
        return True


class Hub:
    """One worker process's waiters, and the watcher thread that wakes them."""

    def __init__(self, db, fetch, newest, publish):
        self.db = db
        # fetch(db, after, limit) -> (changes, oldest first; retention's mark as read)
        self.fetch = fetch
        self.newest = newest  # newest(db) -> the newest committed seq
        self.publish = publish  # publish(conn): PostgreSQL, give queued changes their seqs
        # The app's settings (FEED_WAITERS_MAX, STREAM_BACKLOG_MAX), handed over by ``configure``.
        self.settings = _settings.get(db, {})
        self.lock = threading.Lock()
        self.subscriptions = set()
        self.following = set()
        # The following subscriptions by key (see Subscription.key), so that
        # a change is offered only to those that may want it.
        self._filed = {}
        self.horizon = None
        self.pid = os.getpid()
        self._poke = threading.Event()
        self._notify = threading.Event()
        # PostgreSQL: commits announced, and the announcements a publishing
        # pass has covered; writers wait on the condition for theirs.
        self._announced = self._published = 0
        self._publication = threading.Condition()
        self._postgres = isinstance(db, PostgresqlDatabase)
        self._started = threading.Event()
        self._stopped = threading.Event()
        self._publisher_started = False
        self._start_lock = threading.Lock()
        self._threads = []
        self.reader = _private_copy(db)
        # The waiters' own reads (catching up from the database) take their
        # connections here, never from the pool that ordinary requests use.
        self.readers = _pooled_copy(db, READERS)

    # -- waiters --------------------------------------------------------------

    def subscribe(self, match, capacity, kind, backlog):
        """Take one of ``capacity`` slots for a ``kind`` of waiter; ``Full`` when none is free.

        ``backlog``: how many changes may wait in it (see ``Subscription``).
        """
        self.start()
        subscription = Subscription(self, match, kind, backlog)
        with self.lock:
            if len(self.subscriptions) >= capacity:
                raise Full()
            self.subscriptions.add(subscription)
        metrics.WAITING.labels(kind).inc()
        self._poke.set()
        return subscription

    def follow(self, subscription):
        """File a subscription to be offered changes (under ``lock``)."""
        if subscription not in self.following:
            self.following.add(subscription)
            self._filed.setdefault(subscription.key, set()).add(subscription)
            # An idle SQLite watcher sleeps a whole second: wake it, so that a
            # change committed right after this waiter began is handed over
            # within POLL_INTERVAL, not a second later.
            self._poke.set()

    def release(self, subscription):
        with self.lock:
            held = subscription in self.subscriptions
            self.subscriptions.discard(subscription)
            if subscription in self.following:
                self.following.discard(subscription)
                filed = self._filed[subscription.key]
                filed.discard(subscription)
                if not filed:
                    del self._filed[subscription.key]
        if held:
            metrics.WAITING.labels(subscription.kind).dec()

    # -- writers ----------------------------------------------------------------

    def announce(self, seq=None):
        """Say that a write of this process committed: wake the watchers that follow it.

        SQLite: ``seq`` is the committed change's, or None when not known.
        Writers commit one at a time, so every change up to it is committed:
        with no follower to hand it to, the hub moves past it at once, and
        the watcher sleeps on (it would have read only where the feed stands).

        On PostgreSQL the change waits in a queue for the publisher to give
        it its seq (``recording.py``); this returns once a publishing pass that
        began after the commit has ended, so the writer answers with its
        change in the feed.  It waits ``PUBLISH_TIMEOUT`` at most: the
        change is published by the next pass of any host.
        """
        if not self._postgres:
            if seq is not None:
                with self.lock:
                    if not self.following and self.horizon is not None:
                        self.horizon = max(self.horizon, seq)
                        return
            self._poke.set()
            return
        self._start_publisher()
        with self._publication:
            self._announced += 1
            ticket = self._announced
        self._notify.set()
        with self._publication:
            published = self._publication.wait_for(
                lambda: self._published >= ticket, PUBLISH_TIMEOUT
            )
        if not published:
            logger.warning("A change was not published within %.1f s", PUBLISH_TIMEOUT)

    # -- the threads ------------------------------------------------------------

    def start(self):
        """Start the watcher (and on PostgreSQL the publisher), once per process.

        The watcher reads where the feed stands before anyone may follow it;
        it does so on its own thread, so the caller's connection is left alone.
        """
        if self._started.is_set():
            return
        self._start_thread(self._watch_postgres if self._postgres else self._watch_sqlite)
        if not self._started.wait(10):
            raise OperationalError("the change watcher cannot read the feed")

    def _start_publisher(self):
        """Start the thread that publishes this process's changes, once."""
        if self._publisher_started:
            return
        self._start_thread(self._publish_changes)

    def _start_thread(self, target):
        with self._start_lock:
            if any(thread.name == target.__name__ for thread in self._threads):
                return
            thread = threading.Thread(target=target, name=target.__name__, daemon=True)
            thread.start()
            self._threads.append(thread)
            if target == self._publish_changes:
                self._publisher_started = True

    def _find_horizon(self):
        while self.horizon is None and self._alive():
            try:
                self._reader()
                self.horizon = self.newest(self.reader)
            except Exception as exc:
                if self._alive():
                    logger.warning("The change watcher could not read the feed: %s", exc)
                    self._stopped.wait(1)
        self._started.set()

    def stop(self):
        """Stop the threads (they finish within about a second) and close the waiters' pool."""
        self.readers.close_all()
        self._stopped.set()
        self._poke.set()
        self._notify.set()

    def _alive(self):
        # A process rebinds the database only in tests (an app per test):
        # the hub of the database before stops with it.
        return database.obj is self.db and not self._stopped.is_set()

    def _watch_sqlite(self):
        self._find_horizon()
        seen = None
        while self._alive():
            with self.lock:
                idle = not self.following
            poked = self._poke.wait(IDLE_INTERVAL if idle else POLL_INTERVAL)
            self._poke.clear()
            # SQLite's data_version moves when another connection (another
            # process's writer) commits: read the feed only then, or when a
            # write or a new follower of this process pokes, not 100 times
            # a second for nothing.
            version = self._data_version()
            if poked or version is None or version != seen:
                seen = version
                self._catch_up_safely()
        self.reader.close()

    def _data_version(self):
        """Return SQLite's ``PRAGMA data_version`` on the watcher's connection, None if unread."""
        try:
            return self._reader().execute_sql("PRAGMA data_version").fetchone()[0]
        except Exception:
            return None

    def _reader(self):
        """Return the watcher's own database, connected: it never waits for the pool."""
        if self.reader.is_closed():
            self.reader.connect()
        return self.reader

    def _watch_postgres(self):
        self._find_horizon()
        while self._alive():
            try:
                # The reader's connection (autocommit, never in a transaction
                # between reads) is also the one that listens.
                conn = self._reader().connection()
                conn.execute(f"LISTEN {CHANNEL}")
                self._catch_up()
                while self._alive():
                    notified = list(conn.notifies(timeout=SAFETY_INTERVAL, stop_after=1))
                    if not notified:
                        # Quiet for a while: publish what a host that died
                        # between its commit and its pass left in the queue.
                        self._start_publisher()
                        self._notify.set()
                    self._catch_up(published_through(notified))
            except Exception as exc:
                self.reader.close()
                if self._alive():
                    logger.warning("The change watcher lost its connection (%s); reconnecting", exc)
                    self._stopped.wait(1)
        self.reader.close()

    def _publish_changes(self):
        """Run publishing passes: one for all the commits announced since the last began.

        A pass takes the commits of the whole fleet that are waiting, so
        passes follow each other only as fast as they are asked for; its
        NOTIFY (one per pass) wakes the watchers of every host.
        """
        while self._alive():
            if not self._notify.wait(5.0):
                continue
            try:
                with self._connect() as conn:
                    while self._alive():
                        if not self._notify.wait(5.0):
                            continue
                        self._notify.clear()
                        with self._publication:
                            covering = self._announced
                        self.publish(conn)
                        with self._publication:
                            self._published = max(self._published, covering)
                            self._publication.notify_all()
            except Exception as exc:
                if self._alive():
                    logger.warning(
                        "The change publisher lost its connection (%s); reconnecting", exc
                    )
                    self._stopped.wait(1)

    def _connect(self):
        params = dict(self.db.connect_params)
        return psycopg.connect(dbname=self.db.database, autocommit=True, **params)

    def _catch_up_safely(self):
        try:
            self._catch_up()
        except Exception as exc:
            self.reader.close()
            if self._alive():
                logger.warning("The change watcher could not read the feed: %s", exc)
                self._stopped.wait(1)

    def _offer(self, changes):
        """Hand each change to the subscriptions it matches, and wake them (under ``lock``)."""
        woken = set()
        general = self._filed.get(None, ())
        for change in changes:
            for key in (("session_id", change["session_id"]), ("agent_id", change["agent_id"])):
                self._offer_to(self._filed.get(key, ()), change, woken)
            self._offer_to(general, change, woken)
        for subscription in woken:
            subscription._ready.set()

    @staticmethod
    def _offer_to(subscriptions, change, woken):
        for subscription in subscriptions:
            if subscription.overflowed or change["seq"] <= subscription.after:
                continue
            if subscription.match(change):
                subscription._offer(change)
                woken.add(subscription)

    def _catch_up(self, published=None):
        """Read the changes committed since the last look and hand them out.

        ``published``: a seq up to which every change is known committed
        (``published_through``), or None.  With no one to hand changes to,
        the watcher moves on to it without a query.
        """
        if not self._alive():
            return
        reader = self._reader()
        with self.lock:
            idle = not self.following
        if idle:
            # No one to hand changes to: move on without reading them.
            newest = self.newest(reader) if published is None else published
            with self.lock:
                if not self.following:
                    self.horizon = max(self.horizon, newest)
                    return
        while True:
            found, removed = self.fetch(reader, self.horizon, _BATCH)
            if not found:
                return
            with self.lock:
                if removed > self.horizon:
                    self._cut_off(removed)
                self._offer(found)
                self.horizon = found[-1]["seq"]
            if len(found) < _BATCH:
                return

    def _cut_off(self, removed):
        """End the followers before ``removed``, whose changes retention took (under ``lock``).

        The watcher fell behind by more than the feed keeps, so what it read
        begins past changes it never handed out.  Those followers are offered
        nothing more, as one that overflowed: each answers at the change it
        was last handed, and its client's next read from there is a 410.
        """
        for subscription in self.following:
            if subscription.after < removed:
                subscription.overflowed = True
                subscription._ready.set()
        logger.warning(
            "The change watcher fell behind retention (changes through %d removed, read from %d):"
            " its followers were ended",
            removed,
            self.horizon,
        )


def published_through(notifications):
    """Return the newest seq the publishing passes behind ``notifications`` name, or None.

    A pass's payload is its newest seq, sent once the pass committed, and
    passes commit in seq order: the largest payload is where the feed stands
    at least.  None (read the feed) when there was no notification, or one
    whose payload is not a seq (earlier releases sent an empty one).
    """
    seqs = []
    for notification in notifications:
        try:
            seqs.append(int(notification.payload))
        except ValueError:
            return None
    return max(seqs, default=None)


def _private_copy(db):
    """Return an unpooled database like ``db``, for one thread's own connection."""
    if isinstance(db, PostgresqlDatabase):
        # Each read bounded as the pool's are (deadlines.py): a silent server
        # must not hold the watcher for ever.
        bound = getattr(db, "statement_bound", None)
        return BoundedPsycopg3Database(
            db.database, autoconnect=False, statement_bound=bound, **db.connect_params
        )
    return SqliteDatabase(db.database, pragmas=db._pragmas, autoconnect=False)


def _pooled_copy(db, size):
    """Return a pool of ``size`` connections to ``db``'s database, waiting as ``db`` does."""
    pool = {"max_connections": size, "timeout": db._wait_timeout, "autoconnect": False}
    if isinstance(db, PostgresqlDatabase):
        # Bounded as the requests' pool is (deadlines.py).
        bounds = {"statement_bound": db.statement_bound, "ping_bound": db.ping_bound}
        return BoundedPooledPsycopg3Database(db.database, **pool, **bounds, **db.connect_params)
    return PooledSqliteDatabase(db.database, pragmas=db._pragmas, check_same_thread=False, **pool)


_hubs = {}
_hubs_lock = threading.Lock()
_settings = weakref.WeakKeyDictionary()  # database -> the app's settings


def configure(db, settings):
    """Hand the hubs of ``db`` the app's ``settings`` (a mapping, read as waiters come)."""
    _settings[db] = settings


def hub(fetch, newest, publish):
    """Return this process's hub for the bound database, making it on first use."""
    db = database.obj
    key = (os.getpid(), id(db))
    with _hubs_lock:
        found = _hubs.get(key)
        if found is None or found.db is not db:
            for other in _hubs.values():
                if other.db is not db:
                    other.stop()
            found = _hubs[key] = Hub(db, fetch, newest, publish)
        return found


@atexit.register
def _stop_all():
    with _hubs_lock:
        hubs = list(_hubs.values())
    for each in hubs:
        each.stop()
    for each in hubs:
        for thread in each._threads:
            thread.join(2)


_stopping = threading.Event()


def stop_waiting():
    """End every waiting request of this process within a second: the worker is stopping.

    Long polls answer at once (an empty page and its ``next_cursor``) and
    streams end, so their clients go on elsewhere and the worker is not held
    until Gunicorn's graceful timeout runs out (``gunicorn.conf.py`` calls
    this when a worker is told to stop).
    """
    _stopping.set()


def client_gone(environ):
    """Return a function telling whether the request's client has closed its connection.

    Gunicorn puts the client's socket in the environ; a socket that reads as
    closed (EOF) means the client has gone.  Elsewhere the answer is always no.
    Once the worker is stopping (``stop_waiting``) every client counts as gone.
    """
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return _stopping.is_set
    # poll, not select: a busy worker's descriptors go past select's 1,024.
    # And not a bare recv: on a socket with a timeout, Python waits out the
    # timeout for it (and a TimeoutError is not a closed connection).
    poller = _poll()
    poller.register(sock.fileno(), select.POLLIN | _HANGUP)

    def gone():
        if _stopping.is_set():
            return True
        events = poller.poll(0)
        if not events:
            return False
        if events[0][1] & _HANGUP:
            return True
        try:
            # Readable: a peek answers at once, with data (a next request) or EOF.
            return sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    return gone


def _poll():
    """Return a ``select.poll`` object; under gevent the original one.

    The check never blocks (a timeout of 0), so gevent's cooperative poll
    (a watcher set up per call, a switch to its hub) buys nothing: it was a
    fifth of py-spy's samples of a worker holding 275 idle waiters.
    """
    if "gevent" in sys.modules:
        from gevent import monkey

        if monkey.is_module_patched("select"):
            return monkey.get_original("select", "poll")()
    return select.poll()


_HANGUP = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)
