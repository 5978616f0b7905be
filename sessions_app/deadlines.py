"""A client-side deadline: a silent PostgreSQL costs seconds, not a worker.

A server that stops answering while its TCP connection stays up (frozen,
swapped out, behind a stuck proxy) is not noticed by ``statement_timeout``
(the server would have to answer), nor, on a path whose kernel still
acknowledges the bytes, by TCP keepalives or ``tcp_user_timeout``: psycopg
waits in Python, for ever.  So each round trip here has a deadline, and a
watchdog thread (one per process) shuts down the socket of a connection
still waiting past it; psycopg then fails with ``OperationalError`` (a 503)
and the connection is dropped.

peewee's pool also takes a connection (and pings it with ``SELECT 1``) and
opens a new one while holding locks that every thread of the process
shares, so one thread's wait became everyone's.  ``BoundedPooledPsycopg3Database``
takes a connection from the pool under the lock but pings or opens it
outside, each bounded.  A connection given back moments ago is handed out
without its ping (``ALIVE_BYPASS_WINDOW``).
"""

import heapq
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager, suppress

import peewee
from peewee import OperationalError
from playhouse.pool import MaxConnectionsExceeded, PoolConnection, PooledDatabase
from playhouse.postgres_ext import PooledPsycopg3Database, Psycopg3Database

logger = logging.getLogger(__name__)

#: Seconds after its check-in during which a pooled connection is handed out
#: without its ``SELECT 1`` ping (HikariCP's "alive bypass window", 500 ms).
#: It answered its last statement that recently, so the ping (a round trip:
#: half of a GET's on PostgreSQL) would almost always say what is known.  A
#: server that went away within the window costs the request that takes the
#: connection a 503, as it costs a request already on its way; that broken
#: connection, given back, drops the pool's idle ones, so the next request
#: opens a fresh one.  A silent server is bounded as mid-statement: by the
#: statement's deadline rather than the ping's.
ALIVE_BYPASS_WINDOW = 0.5


class Deadline:
    """One bounded block: ``passed`` once the watchdog had to end its wait."""

    passed = False


class Watchdog:
    """Shuts down the socket of a connection whose round trip has passed its deadline."""

    def __init__(self):
        self._reset()
        # A child of a fork (a Gunicorn worker) starts afresh: the parent's
        # thread is not there, and its lock may have been held at the fork.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self):
        self._lock = threading.Condition()
        self._deadlines = {}  # Deadline -> (deadline, socket descriptor, seconds)
        self._pid = None
        self._wakes_at = 0.0  # when the watchdog looks next (time.monotonic())
        self._shortest = 60.0  # the shortest bound given yet: its sleep with none pending

    @contextmanager
    def bound(self, conn, seconds):
        """Give the block ``seconds`` for its round trips on ``conn`` (a psycopg connection)."""
        token = Deadline()
        try:
            fd = conn.pgconn.socket
        except Exception:
            yield token  # closed already: psycopg fails at once
            return
        deadline = time.monotonic() + seconds
        with self._lock:
            self._start()
            self._deadlines[token] = (deadline, fd, seconds)
            # Woken only when this deadline comes before the watchdog's next look:
            # waking it for every round trip cost each one a thread switch.
            # With nothing pending it sleeps the shortest bound given yet, so
            # a round trip bounded no shorter falls after its next look.
            self._shortest = min(self._shortest, seconds)
            if deadline < self._wakes_at:
                self._wakes_at = deadline
                self._lock.notify()
        try:
            yield token
        finally:
            with self._lock:
                # Under the lock: while its entry exists the descriptor is the
                # connection's (its thread is inside the block), never reused.
                self._deadlines.pop(token, None)

    def _start(self):
        if self._pid != os.getpid():
            self._pid = os.getpid()
            threading.Thread(target=self._watch, name="deadline-watchdog", daemon=True).start()

    def _watch(self):
        with self._lock:
            while True:
                now = time.monotonic()
                for token, (deadline, fd, seconds) in list(self._deadlines.items()):
                    if deadline <= now:
                        del self._deadlines[token]
                        token.passed = True
                        _shut_down(fd, seconds)
                soonest = min(
                    (entry[0] for entry in self._deadlines.values()), default=now + self._shortest
                )
                self._wakes_at = max(soonest, now + 0.01)
                self._lock.wait(self._wakes_at - now)


def _shut_down(fd, seconds):
    logger.warning(
        "PostgreSQL did not answer within %.1f s: the connection is closed (a 503)", seconds
    )
    with suppress(OSError):
        # A duplicate of the descriptor, so the connection's own stays open
        # for psycopg to close; shutting it down ends the wait at once.
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


watchdog = Watchdog()


class _Bounded:
    """Every statement, BEGIN, COMMIT and ROLLBACK within ``statement_bound`` seconds."""

    def __init__(self, *args, statement_bound=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.statement_bound = statement_bound

    @contextmanager
    def _bounded(self, seconds=None):
        seconds = seconds or self.statement_bound
        if not seconds or self._state.closed:
            yield
            return
        with watchdog.bound(self._state.conn, seconds):
            yield

    def execute_sql(self, sql, params=None, **kwargs):
        with self._bounded():
            return super().execute_sql(sql, params, **kwargs)

    def begin(self, *args, **kwargs):
        with self._bounded():
            return super().begin(*args, **kwargs)

    def commit(self):
        with self._bounded():
            return super().commit()

    def rollback(self):
        with self._bounded():
            return super().rollback()


class BoundedPsycopg3Database(_Bounded, Psycopg3Database):
    """One unpooled connection (the change watcher's), each round trip bounded."""


class BoundedPooledPsycopg3Database(_Bounded, PooledPsycopg3Database):
    """The pool, whose checkout pings and opens connections outside its locks, bounded.

    ``ping_bound``: seconds for the ``SELECT 1`` that checks a pooled
    connection (the connect timeout: a live server answers in milliseconds).
    A connection given back less than ``alive_bypass`` seconds ago
    (``ALIVE_BYPASS_WINDOW``) is not pinged.  When a ping fails, the other
    idle connections are dropped too (the server behind them is the same); a
    new one is opened if the old one was refused (a restarted server), and
    none if the ping went unanswered (a silent server would keep a new one
    waiting as long: a 503 at once).  A connection given back broken (the
    server went away under its request) drops the idle ones as well.
    """

    def __init__(self, *args, ping_bound=3, alive_bypass=ALIVE_BYPASS_WINDOW, **kwargs):
        super().__init__(*args, **kwargs)
        self.ping_bound = ping_bound
        self.alive_bypass = alive_bypass
        self._opening = 0
        # Idle connections by key: when each was given back (time.monotonic()).
        # peewee's heap holds when a connection was opened, not that.
        self._checked_in = {}

    def connect(self, reuse_if_open=False):
        if not self._state.closed:
            if reuse_if_open:
                return False
            raise OperationalError("Connection already opened.")
        deadline = time.monotonic() + (self._wait_timeout or 0)
        while True:
            try:
                # Driver errors become peewee's (OperationalError: a 503), as in peewee's connect.
                with peewee.__exception_wrapper__:
                    conn, pooled_at = self._check_out()
                break
            except MaxConnectionsExceeded:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                with self._pool_available:
                    self._pool_available.wait(timeout=min(remaining, 1.0))
        self._state.reset()
        self._state.set_connection(conn)
        if self.server_version is None:
            with peewee.__exception_wrapper__:
                self._set_server_version(conn)
        return True

    def _check_out(self):
        """Return ``(connection, pooled at)``: a pooled one (just back, or pinged) or a new one."""
        while True:
            with self._pool_lock:
                conn, pooled_at, recent = self._take_idle()
                if conn is None:
                    if self._max_connections and (
                        len(self._in_use) + self._opening >= self._max_connections
                    ):
                        raise MaxConnectionsExceeded("Exceeded maximum connections.")
                    self._opening += 1
            if conn is None:
                return self._open(), time.time()
            if recent:
                return conn, pooled_at
            answered, silent = self._ping(conn)
            if answered:
                return conn, pooled_at
            self._give_up(conn)
            self._drop_idle()
            if silent:
                # Up but silent: a new connection would wait as long again.
                raise OperationalError("PostgreSQL did not answer the ping of a pooled connection")

    def _take_idle(self):
        """Pop the oldest idle connection that is not closed or stale (under the pool lock).

        Return ``(connection, pooled at, recent)``: ``recent`` when it was
        given back, idle, within ``alive_bypass`` seconds (it needs no ping).
        """
        while self._connections:
            pooled_at, _counter, conn = heapq.heappop(self._connections)
            key = self.conn_key(conn)
            checked_in = self._checked_in.pop(key, None)
            if self._broken(conn):
                continue
            if self._stale_timeout and self._is_stale(pooled_at):
                self._close_raw(conn)
                continue
            self._in_use[key] = PoolConnection(pooled_at, conn, time.time())
            recent = (
                checked_in is not None
                and time.monotonic() - checked_in < self.alive_bypass
                and self._adapter.txn_status(conn) == self._adapter.txn_idle
            )
            return conn, pooled_at, recent
        return None, None, False

    def _broken(self, conn):
        """Tell whether psycopg knows ``conn`` lost its server (closed, or in no known state)."""
        return conn.closed or self._adapter.txn_status(conn) == self._adapter.txn_unknown

    def _open(self):
        """Open a new connection outside the locks (``connect_timeout`` bounds it)."""
        try:
            conn = super(PooledDatabase, self)._connect()
        except BaseException:
            with self._pool_lock:
                self._opening -= 1
                self._pool_available.notify()
            raise
        with self._pool_lock:
            self._opening -= 1
            self._in_use[self.conn_key(conn)] = PoolConnection(time.time(), conn, time.time())
        return conn

    def _ping(self, conn):
        """Return ``(answered, silent)``: silent when the ping ran out of time (not refused)."""
        deadline = Deadline()
        try:
            with watchdog.bound(conn, self.ping_bound) as deadline:
                if self._adapter.txn_status(conn) != self._adapter.txn_idle:
                    self._adapter.rollback(conn)
                else:
                    conn.cursor().execute("SELECT 1")
        except Exception:
            return False, deadline.passed
        return True, False

    def _give_up(self, conn):
        with self._pool_lock:
            self._in_use.pop(self.conn_key(conn), None)
            self._pool_available.notify()
        self._close_raw(conn)

    def _drop_idle(self):
        with self._pool_lock:
            idle, self._connections = self._connections, []
            self._checked_in.clear()
        for _pooled_at, _counter, conn in idle:
            self._close_raw(conn)
        return len(idle)

    def _close(self, conn, close_conn=False):
        """Give ``conn`` back (peewee's check-in), noting when; a broken one drops the idle ones."""
        key = self.conn_key(conn)
        with self._pool_lock:
            checked_out = key in self._in_use
            broken = checked_out and not close_conn and self._broken(conn)
            super()._close(conn, close_conn)
            if checked_out and not conn.closed:
                self._checked_in[key] = time.monotonic()
        if broken:
            # The server went away under a request: the idle connections to it
            # are broken as well, and each would cost a request its 503.
            dropped = self._drop_idle()
            logger.info("A connection was given back broken: %d idle ones closed", dropped)

    def close_idle(self):
        with self._pool_lock:
            super().close_idle()
            self._checked_in.clear()

    def _can_reuse(self, conn):
        # At check-in, under the pool lock: a rollback left to do is bounded too.
        with watchdog.bound(conn, self.ping_bound):
            return super()._can_reuse(conn)
