"""Waiting for changes: one watcher per worker process, and bounded slots for the waiters.

A waiting request (a long poll, an open stream) holds no database connection
and asks the database nothing while it waits.  Each worker process has one
``Hub``: a watcher thread reads the changes committed since it last looked,
once for all of the process's waiters, and hands each waiter the ones that
match its filters; a waiter whose filters match nothing is never woken.

How the watcher learns that something was committed:

- PostgreSQL: it ``LISTEN``s on ``CHANNEL`` on a connection of its own (one
  per worker), so a write through any worker of any host wakes it.  Writers
  do not ``NOTIFY`` inside their transactions (a notifying commit takes an
  instance-wide lock, so every writer would queue behind the others):
  after COMMIT they ``announce()``, and one notifier thread per worker sends
  a single autocommit ``NOTIFY`` for all the commits announced since its
  last one.  The watcher also looks every ``SAFETY_INTERVAL`` seconds, in
  case a notification was lost with a broken connection.
- SQLite: one host, so the watcher reads the feed's newest changes every
  ``POLL_INTERVAL`` seconds while the process has waiters (a primary-key
  range read that finds nothing most of the time), and at once when a write
  of its own process announces itself.

Capacity is counted in slots per process: a request that would need one
when all are taken gets a 503 with ``Retry-After`` at once.
"""

import atexit
import logging
import os
import select
import socket
import threading
import time

import psycopg
from peewee import OperationalError, PostgresqlDatabase, SqliteDatabase

from . import metrics
from .db import database
from .deadlines import BoundedPsycopg3Database

logger = logging.getLogger(__name__)

CHANNEL = "sessions_changes"
#: SQLite: how often the watcher of a process with waiters looks for new changes.
POLL_INTERVAL = 0.01
#: PostgreSQL: how often the watcher looks even without a notification.
SAFETY_INTERVAL = 1.0
#: How long the notifier gathers commits into one NOTIFY.
NOTIFY_GATHER = 0.002
#: How often a waiting request checks that its client is still there.
CLIENT_CHECK_INTERVAL = 1.0
_BATCH = 1000


class Full(Exception):
    """Every waiting slot of this process is taken."""


class Subscription:
    """A waiter's place at the hub: the matching changes handed to it, and its slot."""

    def __init__(self, hub, match, kind):
        self.hub = hub
        self.match = match
        # ("session_id", value), ("agent_id", value) or None: where the hub files it.
        self.key = getattr(match, "key", None)
        self.kind = kind
        self.after = None
        self.pending = []
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
        when ``limit`` cut the list short.
        """
        with self.hub.lock:
            changes, self.pending = self.pending, []
            self._ready.clear()
            # Following, it has been offered every change up to the horizon.
            through = max(self.after, self.hub.horizon)
            if limit is not None and len(changes) > limit:
                changes = changes[:limit]
                through = changes[-1]["seq"]
            self.after = through
        return changes, through

    def close(self):
        """Give the slot back; a second call does nothing."""
        self.hub.release(self)


class Hub:
    """One worker process's waiters, and the watcher thread that wakes them."""

    def __init__(self, db, fetch, newest):
        self.db = db
        self.fetch = fetch  # fetch(db, after, limit) -> changes, oldest first
        self.newest = newest  # newest(db) -> the newest committed seq
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
        self._postgres = isinstance(db, PostgresqlDatabase)
        self._started = threading.Event()
        self._stopped = threading.Event()
        self._notifier_started = False
        self._start_lock = threading.Lock()
        self._threads = []
        self.reader = _private_copy(db)

    # -- waiters --------------------------------------------------------------

    def subscribe(self, match, capacity, kind):
        """Take one of ``capacity`` slots for a ``kind`` of waiter; ``Full`` when none is free."""
        self.start()
        subscription = Subscription(self, match, kind)
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

    def waiting(self):
        """Return how many slots are taken."""
        with self.lock:
            return len(self.subscriptions)

    # -- writers ----------------------------------------------------------------

    def announce(self):
        """Say that a write of this process committed: wake the watchers that follow it."""
        if self._postgres:
            self._start_notifier()
            self._notify.set()
        else:
            self._poke.set()

    # -- the threads ------------------------------------------------------------

    def start(self):
        """Start the watcher (and on PostgreSQL the notifier), once per process.

        The watcher reads where the feed stands before anyone may follow it;
        it does so on its own thread, so the caller's connection is left alone.
        """
        if self._started.is_set():
            return
        self._start_thread(self._watch_postgres if self._postgres else self._watch_sqlite)
        if not self._started.wait(10):
            raise OperationalError("the change watcher cannot read the feed")

    def _start_notifier(self):
        """Start the thread that sends this process's NOTIFYs, once."""
        if self._notifier_started:
            return
        self._start_thread(self._send_notifications)

    def _start_thread(self, target):
        with self._start_lock:
            if any(thread.name == target.__name__ for thread in self._threads):
                return
            thread = threading.Thread(target=target, name=target.__name__, daemon=True)
            thread.start()
            self._threads.append(thread)
            if target == self._send_notifications:
                self._notifier_started = True

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
        """Stop the threads (they finish within about a second)."""
        self._stopped.set()
        self._poke.set()
        self._notify.set()

    def _alive(self):
        # A process rebinds the database only in tests (an app per test):
        # the hub of the database before stops with it.
        return database.obj is self.db and not self._stopped.is_set()

    def _watch_sqlite(self):
        self._find_horizon()
        while self._alive():
            with self.lock:
                idle = not self.following
            self._poke.wait(1.0 if idle else POLL_INTERVAL)
            self._poke.clear()
            self._catch_up_safely()
        self.reader.close()

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
                    for _ in conn.notifies(timeout=SAFETY_INTERVAL, stop_after=1):
                        pass
                    self._catch_up()
            except Exception as exc:
                self.reader.close()
                if self._alive():
                    logger.warning("The change watcher lost its connection (%s); reconnecting", exc)
                    self._stopped.wait(1)
        self.reader.close()

    def _send_notifications(self):
        while self._alive():
            if not self._notify.wait(5.0):
                continue
            try:
                with self._connect() as conn:
                    while self._alive():
                        if not self._notify.wait(5.0):
                            continue
                        # Commits announced while this one is sent go into the next.
                        time.sleep(NOTIFY_GATHER)
                        self._notify.clear()
                        conn.execute(f"NOTIFY {CHANNEL}")
            except Exception as exc:
                if self._alive():
                    logger.warning(
                        "The change notifier lost its connection (%s); reconnecting", exc
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
                for subscription in self._filed.get(key, ()):
                    if change["seq"] > subscription.after and subscription.match(change):
                        subscription.pending.append(change)
                        woken.add(subscription)
            for subscription in general:
                if change["seq"] > subscription.after and subscription.match(change):
                    subscription.pending.append(change)
                    woken.add(subscription)
        for subscription in woken:
            subscription._ready.set()

    def _catch_up(self):
        """Read the changes committed since the last look and hand them out."""
        if not self._alive():
            return
        reader = self._reader()
        with self.lock:
            idle = not self.following
        if idle:
            # No one to hand changes to: move on without reading them.
            newest = self.newest(reader)
            with self.lock:
                if not self.following:
                    self.horizon = max(self.horizon, newest)
                    return
        while True:
            found = self.fetch(reader, self.horizon, _BATCH)
            if not found:
                return
            with self.lock:
                self._offer(found)
                self.horizon = found[-1]["seq"]
            if len(found) < _BATCH:
                return


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


_hubs = {}
_hubs_lock = threading.Lock()


def hub(fetch, newest):
    """Return this process's hub for the bound database, making it on first use."""
    db = database.obj
    key = (os.getpid(), id(db))
    with _hubs_lock:
        found = _hubs.get(key)
        if found is None or found.db is not db:
            for other in _hubs.values():
                if other.db is not db:
                    other.stop()
            found = _hubs[key] = Hub(db, fetch, newest)
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
    poller = select.poll()
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


_HANGUP = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)
