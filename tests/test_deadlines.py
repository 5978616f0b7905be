"""The watchdog that bounds each PostgreSQL round trip, on sockets of its own.

A round trip past its deadline has its socket shut down, whatever bounds
came before it; one within its bound leaves the watchdog asleep (waking it
for each round trip cost every statement a thread switch).
"""

import socket
import threading
import time
from types import SimpleNamespace

import pytest

from sessions_app.deadlines import Watchdog


class CountingCondition(threading.Condition):
    """A condition that counts how often a waiter was woken."""

    def __init__(self):
        super().__init__()
        self.notified = 0

    def notify(self, n=1):
        self.notified += 1
        super().notify(n)


@pytest.fixture
def watchdog():
    watchdog = Watchdog()
    watchdog._lock = CountingCondition()
    return watchdog


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def connection(sock):
    """Stand in for a psycopg connection: the watchdog reads only ``pgconn.socket``."""
    return SimpleNamespace(pgconn=SimpleNamespace(socket=sock.fileno()))


def test_round_trips_within_their_bound_leave_the_watchdog_asleep(watchdog, pair):
    conn = connection(pair[0])
    for _ in range(200):
        with watchdog.bound(conn, 11) as deadline:
            pass
        assert not deadline.passed
        # Time for the watchdog to look while nothing is pending, as it
        # does between a worker's statements.
        time.sleep(0.002)
    # The first bound of the process starts the watchdog; none after wakes it.
    assert watchdog._lock.notified <= 1


def test_a_round_trip_past_its_deadline_has_its_socket_shut_down(watchdog, pair):
    ours, theirs = pair
    began = time.monotonic()
    with watchdog.bound(connection(ours), 0.2) as deadline:
        # The peer never answers: recv returns only because the socket is shut down.
        assert ours.recv(1) == b""
    assert deadline.passed
    assert 0.15 < time.monotonic() - began < 5


def test_a_shorter_bound_after_longer_ones_is_kept(watchdog, pair):
    ours, theirs = pair
    with watchdog.bound(connection(ours), 11):
        pass
    time.sleep(0.05)  # the watchdog now sleeps the longest bound's length
    began = time.monotonic()
    with watchdog.bound(connection(ours), 0.2) as deadline:
        assert ours.recv(1) == b""
    assert deadline.passed
    assert time.monotonic() - began < 5
