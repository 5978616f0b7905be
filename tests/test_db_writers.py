"""SQLite writers queue for one lock across threads and processes."""

import fcntl
import logging
import os
import threading
import time
from contextlib import contextmanager, suppress

import pytest
from peewee import OperationalError
from problems import assert_unavailable

from sessions_app import create_app, db, migrations

TIMEOUT_MS = 300


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
    # flock on the one descriptor of a process never blocks its own threads:
    # only the thread lock keeps them apart, and the pause lets them overlap
    # if it does not.
    inside, most, guard = [0], [0], threading.Lock()

    def write():
        for _ in range(10):
            queue.acquire()
            try:
                with guard:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0.002)
                with guard:
                    inside[0] -= 1
            finally:
                queue.release()

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1


@contextmanager
def another_process_writing(queue):
    """Yield a descriptor holding the writer lock: an open file of its own, as another process's."""
    other = os.open(queue.path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        yield other
    finally:
        os.close(other)


def gives_up(queue):
    with pytest.raises(OperationalError, match="database is locked"):
        queue.acquire()


def ends_after(seconds, other):
    """Let ``other`` go after ``seconds``, as another process's write would end."""
    threading.Timer(seconds, fcntl.flock, (other, fcntl.LOCK_UN)).start()


def test_a_writer_waits_for_another_process_no_longer_than_its_timeout(queue):
    with another_process_writing(queue) as other:
        gives_up(queue)
        assert queue._threads.acquire(blocking=False), "a failed wait must free the thread lock"
        queue._threads.release()
        fcntl.flock(other, fcntl.LOCK_UN)
        queue.acquire()
        queue.release()


def test_a_writer_waits_for_another_process_in_the_kernel_not_by_polling(queue, monkeypatch):
    """It is woken when the lock is let go: a try or two, not one every millisecond."""
    queue.timeout = 10
    with another_process_writing(queue) as other:
        real, tries = fcntl.flock, []

        def counted(fd, operation):
            if fd != other and operation & fcntl.LOCK_EX:
                tries.append(operation)
            return real(fd, operation)

        monkeypatch.setattr(fcntl, "flock", counted)
        threading.Timer(0.3, real, (other, fcntl.LOCK_UN)).start()
        queue.acquire()
        with pytest.raises(BlockingIOError):
            real(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        queue.release()
    assert len(tries) <= 3, f"{len(tries)} tries of the lock while it was held: polling"


def test_under_gevent_a_writer_tries_the_lock_again_with_no_thread_of_its_own(queue, monkeypatch):
    """A blocking flock in a greenlet would stop its whole process, past any deadline."""
    monkeypatch.setattr(db, "_threads_are_green", lambda: True)
    with another_process_writing(queue) as other:
        gives_up(queue)
        queue.timeout = 10
        ends_after(0.1, other)
        queue.acquire()
        queue.release()
    assert queue._waiter is None


def test_a_writer_gets_the_lock_still_awaited_for_one_that_gave_up(queue):
    with another_process_writing(queue) as other:
        gives_up(queue)  # its wait in the kernel goes on
        queue.timeout = 10
        ends_after(0.2, other)
        queue.acquire()  # handed the lock the waiter was still waiting for
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        queue.release()
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # let go: another process gets it


def test_a_lock_taken_after_its_writer_gave_up_is_let_go(queue):
    with another_process_writing(queue) as other:
        gives_up(queue)
        fcntl.flock(other, fcntl.LOCK_UN)  # the waiter takes it now, for nobody
        deadline = time.monotonic() + 10
        while not _took(other):
            assert time.monotonic() < deadline, "the lock was kept with no writer waiting"
            time.sleep(0.01)


def test_a_writer_interrupted_while_it_waits_leaves_the_lock_to_no_one(queue, monkeypatch):
    """An exception in the wait (a signal handler's) must not leave the lock held for nobody."""
    queue.timeout = 10
    with another_process_writing(queue) as other:
        waiter = queue._current_waiter()
        wait = waiter._changed.wait

        def interrupted(timeout=None):
            monkeypatch.setattr(waiter._changed, "wait", wait)
            raise KeyboardInterrupt

        monkeypatch.setattr(waiter._changed, "wait", interrupted)
        with pytest.raises(KeyboardInterrupt):
            queue.acquire()
        fcntl.flock(other, fcntl.LOCK_UN)  # the waiter takes it now, for nobody
        deadline = time.monotonic() + 10
        while not _took(other):
            assert time.monotonic() < deadline, "the lock was kept for a writer that left"
            time.sleep(0.01)


def test_a_forked_child_holds_no_turn_and_none_of_its_parents_descriptors(queue):
    queue.acquire()
    try:
        fd = queue._fd
        child = os.fork()
        if child == 0:  # the child: it must not release the parent's turn
            code = 0 if not queue.release() and queue._fd is None else 1
            with suppress(OSError):
                os.fstat(fd)
                code = code or 2  # the inherited copy is still open
            os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        other = os.open(queue.path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the parent still holds it
        finally:
            os.close(other)
    finally:
        queue.release()


def _took(fd):
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def test_a_writer_waits_for_another_thread_no_longer_than_its_timeout(queue):
    queue.acquire()
    failed = []
    waiter = threading.Thread(target=lambda: _try_acquire(queue, failed))
    started = time.monotonic()
    waiter.start()
    waiter.join(timeout=30)
    waited = time.monotonic() - started
    queue.release()
    assert not waiter.is_alive(), "the wait was not bounded"
    assert failed == ["database is locked: no turn to write in time"]
    assert waited >= queue.timeout  # it waited its turn, then gave up


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


def test_the_thread_lock_is_released_when_unlocking_the_file_fails(queue, monkeypatch):
    queue.acquire()
    monkeypatch.setattr(fcntl, "flock", _fail)
    with pytest.raises(OSError):
        queue.release()
    monkeypatch.undo()
    assert queue._threads.acquire(blocking=False)
    queue._threads.release()


def test_closing_the_queue_closes_its_lock_file(queue):
    queue.timeout = 10
    with another_process_writing(queue) as other:
        ends_after(0.05, other)
        queue.acquire()  # waited for through the waiter's descriptor
        queue.release()
    fd, waiter = queue._fd, queue._waiter
    queue.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    waiter.thread.join(10)
    assert not waiter.thread.is_alive(), "the waiter's thread (which closes its descriptor) went on"
    queue.acquire()  # opens the file again
    assert queue._fd is not None
    queue.release()
    queue.close()


@pytest.fixture
def sqlite(tmp_path):
    """An app on SQLite whose writers wait at most TIMEOUT_MS for their turn."""
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": f"sqlite:///{tmp_path}/sessions.sqlite3",
            "SQLITE_BUSY_TIMEOUT_MS": TIMEOUT_MS,
        }
    )
    migrations.upgrade()
    yield app
    db.database.close_all()


@pytest.mark.parametrize("dispose", ["close_all", "dispose"])
def test_closing_the_database_closes_its_lock_file(sqlite, dispose):
    assert sqlite.test_client().post("/api/sessions", json={"agent_id": "a"}).status_code == 201
    fd = db.database.obj.writers._fd
    os.fstat(fd)
    getattr(db.database.obj, dispose)()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_writer_waiting_longer_than_the_busy_timeout_gets_a_503(sqlite):
    other = os.open(db.database.obj.writers.path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)  # another process's turn to write
        started = time.monotonic()
        response = sqlite.test_client().post("/api/sessions", json={"agent_id": "a"})
        waited = time.monotonic() - started
    finally:
        os.close(other)
    assert_unavailable(response)
    assert waited >= TIMEOUT_MS / 1000
    assert sqlite.test_client().post("/api/sessions", json={"agent_id": "a"}).status_code == 201


def test_a_connection_given_back_mid_transaction_leaves_the_next_write_unaffected(sqlite):
    def abandon():
        with db.connected():
            db.database.begin()
            db.database.execute_sql(
                "INSERT INTO sessions (id, agent_id, status, data, created_at, last_active, "
                "message_count) VALUES ('abandoned', 'a', 'created', '{}', 0, 0, 0)"
            )
        # Given back with the transaction open: the pool rolls it back.

    in_thread(abandon)
    client = sqlite.test_client()
    created = [client.post("/api/sessions", json={"agent_id": "a"}) for _ in range(2)]
    created.append(in_thread(lambda: client.post("/api/sessions", json={"agent_id": "b"})))
    assert [response.status_code for response in created] == [201] * 3
    listed = client.get("/api/sessions").get_json()["sessions"]
    assert "abandoned" not in {session["id"] for session in listed}


def in_thread(function):
    """Run ``function`` in a thread of its own; return what it returned."""
    results = []
    thread = threading.Thread(target=lambda: results.append(function()))
    thread.start()
    thread.join()
    return results[0]


def test_a_turn_to_write_left_held_by_a_request_is_released_at_its_end(sqlite, caplog):
    @sqlite.get("/forgets-its-turn")
    def forgets_its_turn():
        db.database.obj.writers.acquire()
        return {}

    client = sqlite.test_client()
    with caplog.at_level(logging.ERROR, logger="sessions_app.db"):
        assert client.get("/forgets-its-turn").status_code == 200
    assert [r.getMessage() for r in caplog.records] == [
        "A turn to write was still held when the request ended; released it"
    ]
    created = in_thread(lambda: client.post("/api/sessions", json={"agent_id": "a"}))
    assert created.status_code == 201, created.get_json()


def test_a_failed_commit_and_its_rollback_leave_the_lock_free(sqlite, monkeypatch):
    database = db.database.obj
    with db.connected():
        monkeypatch.setattr(db.PooledSqliteDatabase, "commit", _fail)
        with pytest.raises(OSError), database.atomic():
            database.execute_sql("SELECT 1")
        monkeypatch.undo()
        assert database.writers._threads.acquire(blocking=False)
        database.writers._threads.release()


def _fail(*args):
    raise OSError("disk I/O error")
