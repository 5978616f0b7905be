"""SQLite writers queue for one lock across threads and processes."""

import fcntl
import os
import threading

import pytest
from peewee import OperationalError

from sessions_app import db


@pytest.fixture
def queue(tmp_path):
    return db.WriterQueue(str(tmp_path / "x.sqlite3.writer-lock"), timeout=0.2)


def test_another_process_cannot_take_the_lock_while_it_is_held(queue):
    queue.acquire()
    other = os.open(queue.path, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        queue.release()
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(other)


def test_threads_take_turns(queue):
    inside, overlaps = [], []

    def write():
        for _ in range(200):
            queue.acquire()
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(len(inside))
            inside.pop()
            queue.release()

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == []


def test_a_writer_waits_for_another_process_no_longer_than_its_timeout(queue):
    other = os.open(queue.path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(OperationalError, match="database is locked"):
            queue.acquire()
        assert queue._threads.acquire(blocking=False), "a failed wait must free the thread lock"
        queue._threads.release()
        fcntl.flock(other, fcntl.LOCK_UN)
        queue.acquire()
        queue.release()
    finally:
        os.close(other)


def test_a_writer_waits_for_another_thread_no_longer_than_its_timeout(queue):
    queue.acquire()
    failed = []
    waiter = threading.Thread(target=lambda: _try_acquire(queue, failed))
    waiter.start()
    waiter.join()
    queue.release()
    assert failed == ["database is locked: no turn to write in time"]


def _try_acquire(queue, failed):
    try:
        queue.acquire()
    except OperationalError as exc:
        failed.append(str(exc))


def test_a_second_release_does_nothing(queue):
    queue.acquire()
    queue.release()
    queue.release()
    queue.acquire()  # would block forever had the second release unbalanced the lock
    queue.release()


def test_a_failed_commit_and_its_rollback_leave_the_lock_free(app, monkeypatch):
    database = db.database.obj
    if not isinstance(database, db.QueuedSqliteDatabase):
        pytest.skip("SQLite only")
    with database.connection_context():
        monkeypatch.setattr(db.PooledSqliteDatabase, "commit", _fail)
        with pytest.raises(OSError), database.atomic():
            database.execute_sql("SELECT 1")
        monkeypatch.undo()
        assert database.writers._threads.acquire(blocking=False)
        database.writers._threads.release()


def _fail(self):
    raise OSError("disk I/O error")
