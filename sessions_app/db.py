"""The database: one proxy, bound when the app is created, pooled per worker.

SQLite and PostgreSQL are both used through peewee's connection pools.  Only
code that talks to the database holds a connection, for as long as that
takes: each model method runs in ``connected()``, which takes an open
connection from the pool (pragmas already set) and gives it back when the
method returns, before the response is sent.  A request that needs no data
(``/metrics``, the API description, a 404) never touches the database, so it
answers as usual while the database is down.
"""

import fcntl
import logging
import os
import sys
import threading
import time
import weakref
from contextlib import contextmanager, suppress
from urllib.parse import urlparse

from peewee import DatabaseProxy, OperationalError
from playhouse.db_url import parse as parse_url
from playhouse.pool import PooledSqliteDatabase

from .deadlines import BoundedPooledPsycopg3Database

logger = logging.getLogger(__name__)

database = DatabaseProxy()


def make_database(config):
    """Build the pooled database named by ``config["DATABASE_URL"]``."""
    url = config["DATABASE_URL"]
    scheme = urlparse(url).scheme
    pool = {
        "max_connections": config["DATABASE_POOL_SIZE"],
        "timeout": config["DATABASE_POOL_TIMEOUT"],
        "autoconnect": False,
    }
    if scheme == "sqlite":
        path = parse_url(url)["database"]
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # BEGIN IMMEDIATE takes the write lock at the start of a transaction,
        # so writers in other processes wait on busy_timeout instead of
        # failing with "database is locked" when they upgrade a read lock.
        return QueuedSqliteDatabase(
            path,
            lock_type="IMMEDIATE",
            check_same_thread=False,
            write_timeout=config["SQLITE_BUSY_TIMEOUT_MS"] / 1000,
            pragmas={
                "journal_mode": "wal",
                # FULL syncs the WAL at every commit: an acknowledged write
                # survives a power cut, not only a crash of the process.
                "synchronous": "full",
                "foreign_keys": 1,
                "busy_timeout": config["SQLITE_BUSY_TIMEOUT_MS"],
            },
            **pool,
        )
    if scheme in ("postgres", "postgresql"):
        params = parse_url(url, unquote_password=True)
        # A server that is down or stuck must cost a request a quick 503, not
        # hang it until Gunicorn kills the worker; the URL's own values win.
        params.setdefault("connect_timeout", config["DATABASE_CONNECT_TIMEOUT"])
        params.setdefault("options", _server_options(config))
        for name, value in KEEPALIVES.items():
            params.setdefault(name, value)
        # Bytes unacknowledged this long (a host gone from the network) end
        # the connection.  A server that hangs behind a live kernel (which
        # acknowledges the bytes) is bounded by deadlines.py instead.
        params.setdefault("tcp_user_timeout", TCP_USER_TIMEOUT_MS)
        return BoundedPooledPsycopg3Database(
            **params,
            **pool,
            statement_bound=statement_bound(config),
            ping_bound=config["DATABASE_CONNECT_TIMEOUT"],
        )
    raise ValueError(
        f"DATABASE_URL must start with sqlite://, postgres:// or postgresql://, not {scheme}://"
    )


#: libpq's tcp_user_timeout, in milliseconds.
TCP_USER_TIMEOUT_MS = 10_000
#: libpq's TCP keepalives on the service's connections: a server that is
#: gone (a host cut off, not a stopped one) is noticed within about 11 s,
#: not the kernel's two hours.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


def statement_bound(config):
    """Return the seconds a round trip may take before the client gives up on the server.

    A second past ``statement_timeout``: a server that is alive answers
    (with its own error) before then.
    """
    return config["DATABASE_STATEMENT_TIMEOUT_MS"] / 1000 + 1


def _server_options(config):
    """Return the settings each of the service's PostgreSQL sessions starts with.

    A stalled transaction (a stuck worker, a client host cut off) is ended
    by the server after ``DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS``, freeing
    its locks (the feed's append lock above all); the server's keepalives
    find a peer that vanished mid-transaction as the client's find a server.
    """
    settings = {
        "statement_timeout": config["DATABASE_STATEMENT_TIMEOUT_MS"],
        "idle_in_transaction_session_timeout": config["DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS"],
        "tcp_keepalives_idle": KEEPALIVES["keepalives_idle"],
        "tcp_keepalives_interval": KEEPALIVES["keepalives_interval"],
        "tcp_keepalives_count": KEEPALIVES["keepalives_count"],
    }
    return " ".join(f"-c {name}={value}" for name, value in settings.items())


def lock_file_path(path, suffix):
    """Return the path of a lock file beside the SQLite file ``path``; None in memory."""
    in_memory = path == ":memory:" or path.startswith("file::memory:")
    return None if in_memory else f"{path}.{suffix}"


def open_lock_file(path):
    """Open (making it) a lock file for this process: a descriptor no fork or exec shares."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)


class WriterQueue:
    """One writer at a time across threads and processes, each waiting a bounded time.

    A thread lock orders the threads of a process (woken as soon as it is
    free); an exclusive ``flock`` on ``path`` orders the processes.  The
    writer whose turn it is in its process tries the file lock at once; when
    another process holds it, the process's ``_FileWaiter`` waits for it in
    the kernel and hands it over the moment it is free, while the writer
    waits until its deadline at most.  A writer that waits longer than
    ``timeout`` seconds gets ``OperationalError`` (a 503), as SQLite's own
    busy timeout would give it.  Under gevent, whose threads are greenlets
    of one, the writer tries the lock again and again instead.

    A fork's child starts afresh: it closes its copies of the parent's
    descriptors and holds no turn (``_after_fork``).
    """

    def __init__(self, path, timeout):
        self.path = path
        self.timeout = timeout
        self._threads = threading.Lock()
        self._held = threading.local()
        self._state = threading.Lock()  # guards _fd and _waiter against close()
        self._fd = None
        self._waiter = None  # this process's _FileWaiter, made when first needed
        self._holder = None  # the descriptor holding the file lock, while a writer holds it
        _queues.add(self)

    def acquire(self):
        deadline = time.monotonic() + self.timeout
        if not self._threads.acquire(timeout=self.timeout):
            raise OperationalError("database is locked: no turn to write in time")
        try:
            if self.path is not None:
                self._holder = self._lock_file(deadline)
        except BaseException:
            self._threads.release()
            raise
        self._held.value = True

    def _lock_file(self, deadline):
        """Take the file lock by ``deadline``; return the descriptor that holds it."""
        fd = self._descriptor()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            pass  # another process writes: wait for it in the kernel, not by polling
        if _threads_are_green():
            self._poll_file(fd, deadline)
            return fd
        holder = self._current_waiter().take(deadline)
        if holder is None:
            raise OperationalError("database is locked: no turn to write in time")
        return holder

    def _descriptor(self):
        with self._state:
            if self._fd is None:
                try:
                    self._fd = open_lock_file(self.path)
                except OSError as exc:
                    raise OperationalError(f"cannot open the writer lock: {exc}") from exc
            return self._fd

    def _current_waiter(self):
        with self._state:
            if self._waiter is None or self._waiter.stopped:
                try:
                    self._waiter = _FileWaiter(self.path)
                except (OSError, RuntimeError) as exc:
                    raise OperationalError(f"cannot wait for the writer lock: {exc}") from exc
            return self._waiter

    @staticmethod
    def _poll_file(fd, deadline):
        # Under gevent a blocking flock would stop every greenlet of the
        # process, past any deadline: try again after 50 us, doubling to 1 ms.
        pause = 0.00005
        while True:
            time.sleep(pause)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise OperationalError("database is locked: no turn to write in time") from None
                pause = min(pause * 2, 0.001)

    def release(self):
        """Release the lock if this thread holds it; return whether it did.

        A second call does nothing.  The thread lock is released even when
        unlocking the file fails, so no thread of this process waits for a
        turn that will never come.
        """
        if not getattr(self._held, "value", False):
            return False
        self._held.value = False
        holder, self._holder = self._holder, None
        try:
            if holder is not None:
                fcntl.flock(holder, fcntl.LOCK_UN)
        finally:
            self._threads.release()
        return True

    def close(self):
        """Close the lock file and end the waiter; the next writer opens them again."""
        with self._state:
            fd, waiter = self._fd, self._waiter
            self._fd = self._waiter = self._holder = None
        if waiter is not None:
            waiter.stop()  # its thread closes its own descriptor
        if fd is not None:
            os.close(fd)

    def _after_fork(self):
        # The child holds copies of the parent's descriptors and locks, not its
        # threads: closing the copies leaves the parent's file lock as it is,
        # and no turn the parent's threads held is the child's to release.
        inherited = (self._fd, self._waiter and self._waiter.fd)
        self._threads, self._state = threading.Lock(), threading.Lock()
        self._held = threading.local()
        self._fd = self._waiter = self._holder = None
        for fd in inherited:
            if fd is not None:
                with suppress(OSError):
                    os.close(fd)


#: Every WriterQueue of the process, for the child of a fork to reset.
_queues = weakref.WeakSet()


def _reset_queues_in_child():
    for queue in list(_queues):
        queue._after_fork()


os.register_at_fork(after_in_child=_reset_queues_in_child)


def _threads_are_green():
    """Tell whether gevent patched ``threading``: then a "thread" is a greenlet of this one."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


class _FileWaiter:
    """A thread that waits in the kernel for the writer lock, for its process's writers.

    A blocking ``flock`` is woken the moment the lock is free, but cannot be
    given a timeout; so this thread makes the call and the writer waits for
    the thread, until its own deadline at most.  A lock taken after its
    writer gave up is let go at once.  The thread has a descriptor of its
    own (an open file of its own), so its lock and a writer's own try
    (``LOCK_NB`` on the queue's) exclude each other as two processes' would.
    """

    def __init__(self, path):
        self.fd = open_lock_file(path)
        self._changed = threading.Condition()
        self._wanted = False  # a writer waits for the lock
        self._ready = False  # the thread holds it for that writer, not yet taken
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="sqlite-writer-lock", daemon=True)
        try:
            self.thread.start()
        except BaseException:
            os.close(self.fd)
            raise

    def take(self, deadline):
        """Return the descriptor that holds the lock for the caller, or None at ``deadline``.

        The caller releases it (``LOCK_UN`` on that descriptor).
        """
        with self._changed:
            self._wanted = True
            self._changed.notify_all()
            try:
                while not self.stopped:
                    if self._ready:
                        self._ready = False
                        return self.fd
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._changed.wait(remaining)
                return None
            finally:
                # Taken, timed out or interrupted (an exception in the wait):
                # a lock the thread holds and nobody took is let go.
                self._wanted = False
                self._changed.notify_all()

    def stop(self):
        """End the thread; it closes its descriptor once it is not waiting in the kernel."""
        with self._changed:
            self.stopped = True
            self._changed.notify_all()

    def _run(self):
        try:
            while self._wait_for_a_writer():
                fcntl.flock(self.fd, fcntl.LOCK_EX)
                if not self._hand_over():
                    fcntl.flock(self.fd, fcntl.LOCK_UN)  # its writer gave up meanwhile
        except OSError as exc:
            logger.error("The SQLite writer lock cannot be waited for: %s", exc)
        finally:
            self.stop()  # the queue makes another waiter for its next writer
            os.close(self.fd)

    def _wait_for_a_writer(self):
        with self._changed:
            while not (self._wanted or self.stopped):
                self._changed.wait()
            return not self.stopped

    def _hand_over(self):
        """Give the lock just taken to the writer waiting for it; False if none still is."""
        with self._changed:
            if not self._wanted or self.stopped:
                return False
            self._ready = True
            self._changed.notify_all()
            # Until the writer took it or stopped waiting: a second flock on a
            # descriptor that holds the lock would return at once, and its
            # let-go would free the writer's lock.
            while self._ready and self._wanted and not self.stopped:
                self._changed.wait()
            taken, self._ready = not self._ready, False
            return taken


class QueuedSqliteDatabase(PooledSqliteDatabase):
    """Pooled SQLite whose write transactions queue for the lock instead of polling it.

    A writer that finds SQLite's write lock taken sleeps and retries (1, 2,
    5 ... 100 ms) until the busy timeout: under 16 concurrent writers most of
    a write's time went in sleeping after the lock was already free, and
    p99 reached several hundred ms.  Here every transaction of every process
    on this file queues in a ``WriterQueue`` from BEGIN to COMMIT or
    ROLLBACK; the busy timeout still covers writers outside the service.
    """

    def __init__(self, database, *args, write_timeout=10, **kwargs):
        super().__init__(database, *args, **kwargs)
        self.writers = WriterQueue(lock_file_path(database, "writer-lock"), write_timeout)

    def begin(self, lock_type=None):
        self.writers.acquire()
        try:
            super().begin(lock_type)
        except BaseException:
            self.writers.release()
            raise

    def commit(self):
        try:
            super().commit()
        finally:
            self.writers.release()

    def rollback(self):
        try:
            super().rollback()
        finally:
            self.writers.release()

    def close(self):
        closed = super().close()
        # A connection given back in the middle of a transaction that peewee
        # did not open (a bare BEGIN) is rolled back by the pool, not through
        # rollback() above: its turn to write ends here.
        self.writers.release()
        return closed

    def close_all(self):
        super().close_all()
        self.writers.close()

    def dispose(self):
        super().dispose()
        self.writers.close()


@contextmanager
def connected():
    """Hold a connection for the block (or, as ``@connected()``, the function).

    The connection is this thread's own if it already has one open (an outer
    scope's, which this one leaves open), else one taken from the pool and
    given back when the block ends, even when it raised.  A connection that
    cannot be had raises ``OperationalError`` (a 503).
    """
    if not database.is_closed():
        yield
        return
    # peewee's context counts nested scopes: a connection_context() opened
    # inside this one leaves the connection to it.
    with database.connection_context():
        yield


def ping():
    """Run the cheapest query there is; raise if the database does not answer."""
    with connected():
        database.execute_sql("SELECT 1")


def init_app(app):
    """Bind the database to ``app``'s configuration; release a forgotten turn to write."""
    if database.obj is not None:
        # The proxy is shared by every app in the process: give back the
        # connections of the database it was bound to before.
        database.obj.close_all()
    database.initialize(make_database(app.config))
    app.teardown_request(_end_turn_to_write)


def _end_turn_to_write(exc):
    # A backstop: a turn to write that outlived its transaction would make
    # every later writer of this worker wait its full timeout, then fail.
    writers = getattr(database.obj, "writers", None)
    if writers is not None and writers.release():
        logger.error("A turn to write was still held when the request ended; released it")


def describe(db):
    """Name a database for logs without its password."""
    if isinstance(db, PooledSqliteDatabase):
        return f"sqlite {db.database}"
    params = db.connect_params
    return f"postgresql {params.get('host', 'localhost')}:{params.get('port', 5432)}/{db.database}"
