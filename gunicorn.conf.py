"""Gunicorn settings for the Session API: every server setting lives here.

Environment variables override the values marked so; docs/operations.rst
(Configuration) lists them.

The master imports no app code and none of Flask, peewee, psycopg or
prometheus_client: only ``sessions_app.config``, ``.logs``, ``.tokenfile``
and ``.exposure``, which use the standard library (and orjson).  So each worker imports them
itself, after its worker class set up (a gevent worker monkey-patches first),
and no connection or lock made in the master crosses the fork.
"""

import glob
import logging
import os
import socket
import subprocess
import sys

from gunicorn import glogging

from sessions_app import config as _config
from sessions_app import logs as _logs
from sessions_app import tokenfile as _tokenfile

# Every worker writes its metrics here for /metrics to add up; prometheus_client
# reads it when a worker imports it.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", "var/prometheus")

# Named with a leading underscore: Gunicorn reads every other name as a setting.
_settings = _config.load()


def _adopt_tokens_file(path):
    """Check the tokens file and keep it in force for the workers forked next.

    Gunicorn runs this file at start and again on SIGHUP, before it starts
    new workers, which inherit what ``tokenfile.adopt`` kept (see its
    docstring).  At start a malformed file stops Gunicorn, naming the entry;
    on SIGHUP it is logged, and the tokens in force stay.
    """
    try:
        entries, error = _tokenfile.adopt(path)
    except _tokenfile.TokenFileError as exc:
        sys.exit(f"Not starting: {exc}")
    log = logging.getLogger("gunicorn.error")
    if error is not None:
        log.error("Tokens file not reloaded, the %d tokens in force stay: %s", len(entries), error)
    else:
        log.info("Tokens file %s: %d tokens in force", path, len(entries))


if _settings["SESSIONS_API_TOKENS_FILE"]:
    _adopt_tokens_file(_settings["SESSIONS_API_TOKENS_FILE"])

# BIND=unix:/run/sessions-app/gunicorn.sock behind nginx (deploy/).
bind = [
    os.environ.get("BIND")
    or f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
]
# On a TCP address each worker listens on a socket of its own (SO_REUSEPORT)
# and the kernel spreads new connections over them.  On one shared socket
# the first worker awake takes a burst of connections and keeps them while
# they are kept alive (16 clients connecting at once to 4 workers: one
# worker held 13 to 16), serving them through its own pool while the
# others idle.  A unix socket cannot be spread so: it stays one, shared.
# docs/operations.rst (Workers and connections) has the figures and what a
# stopping worker does to the connections queued on its socket.
reuse_port = not any(address.startswith(("unix:", "fd://")) for address in bind)
# The unix socket is created rw for the owner and the group (nginx's group,
# given to the service by systemd or by GUNICORN_GROUP), nothing for others.
umask = int(os.environ.get("GUNICORN_UMASK", "0o007"), 8)
group = os.environ.get("GUNICORN_GROUP") or None

# Chosen with benchmarks/ (README.rst, Performance), 16 connections, SQLite,
# the settings measured side by side in one run on a 2-core machine:
# - gthread, not sync: sync workers drop keep-alive and hold one request
#   each; 4 sync workers sent 760 messages/s where 2 x 4 gthread sent 1,010.
# - 4 workers x 2 threads, not 2 x 4: over 5 interleaved rounds a page of 50
#   ran at 3,170 req/s against 1,190 (p50 3.4 ms vs 13.7; 2 x 4 had more
#   rounds at a third of its speed, a drop whose cause is not found: the
#   bare ceiling has it too, less often).
#   Fewer threads per process also wait less for the GIL while holding the
#   SQLite write lock: creates 1,750/s vs 1,070/s.  GETs were the same;
#   1 x 8 read 25 % less; 4 x 4 was no faster, with a worse p99.
# One connection per thread that serves ordinary requests (DATABASE_POOL_SIZE's
# default): no such request waits for one.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
# Waiting requests (long polls with ``wait``, event streams) hold a thread
# each while they wait, but no database connection, and cost nothing while
# they wait (sessions_app/waiting.py; its watcher has a connection of its
# own, outside the pool).  Each worker has a thread for each of its
# FEED_WAITERS_MAX waiting slots on top of the threads for ordinary
# requests; a waiter beyond the slots gets a 503 at once, so waiters can
# never take the threads ordinary requests need.
# Measured with benchmarks/feed.py (README.rst, Performance) on 2 cores
# shared with other work (load average 7 to 11): with 1,000 long polls and
# 100 streams held, gets kept 0.94x (SQLite) and 0.98x (PostgreSQL) of
# their throughput alone, messages 0.73x and 1.04x; workers 54 to 61 MB;
# idle, the 1,100 waiters cost the 4 workers 1.1 s of CPU per 10 s.
# The gevent worker runs the service correctly (tests/test_gevent.py);
# measured for waiting (1,000 long polls and 100 streams held, load average
# 7 to 20 on the 2 cores) it did not win: idle, the waiters cost its 4
# workers 102 ms of CPU a second on SQLite against 79 to 88 for gthread
# (95 against 61 on PostgreSQL), and in benchmarks/feed.py on SQLite its
# commit-to-waiter probe got an answer that was not a page of changes
# (likely a 503: gevent workers accept unevenly, and a worker past its
# FEED_WAITERS_MAX slots refuses a waiter; not yet confirmed).  It needs the
# gevent extra, and a SQLite call stops every greenlet of its worker while
# it runs.
threads = _settings["GUNICORN_THREADS"] + _settings["FEED_WAITERS_MAX"]

# Clients (and nginx's upstream keepalive) reuse connections: closing each
# one (keepalive = 0) cost GETs 28 % of their throughput.  5 s and 30 s
# measured the same; 5 s lets go of idle clients' sockets sooner.
keepalive = 5
timeout = 30
graceful_timeout = 30

# Gunicorn's control socket defaults to one path per user, shared by every
# instance on the host; give this service its own.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "var/gunicorn.ctl")

# The app decides whom to trust for the client's address and scheme
# (TRUST_PROXY); Gunicorn would otherwise believe X-Forwarded-Proto from any
# peer on a unix socket.
secure_scheme_headers = {}

# The app writes one line per request (sessions_app.requestlog), so no access log
# here; Gunicorn's own lines come out in the app's format, on stdout.
accesslog = None
logconfig_dict = _logs.dict_config(_settings["LOG_LEVEL"], _settings["LOG_FORMAT"])


class _NoAccessLogger(glogging.Logger):
    """Gunicorn's logger, told that there is no access log.

    With ``logconfig_dict`` set, Gunicorn would otherwise build the access
    log's fields for every request and then drop them (its logger is off).
    """

    access_log_enabled = False

    def access(self, resp, req, environ, request_time):
        """Write nothing: the app logs each request itself."""


logger_class = _NoAccessLogger


def on_starting(server):
    """Check the address is free, empty the metrics folder and bring the schema
    up to date, once, before any worker starts.

    The schema step runs in a process of its own, so the master loads
    nothing of the app; if it fails, Gunicorn stops with its message.
    """
    _refuse_a_taken_address(server.cfg)
    _empty_metrics_folder(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    command = [sys.executable, "-m", "flask", "--app", "sessions_app", "init-db"]
    try:
        done = subprocess.run(command, check=True, stderr=subprocess.PIPE, text=True)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"{' '.join(command[2:])} failed:\n{exc.stderr.strip()}") from None
    sys.stderr.write(done.stderr)


def _refuse_a_taken_address(cfg):
    # With reuse_port a second server on a TCP address already served would
    # start too, and quietly take part of its connections: bind a socket
    # without SO_REUSEPORT first, which a listening address refuses.
    if not cfg.reuse_port:
        return
    for address in cfg.address:
        if not isinstance(address, tuple):
            continue
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address[:2])
            except OSError as exc:
                raise RuntimeError(
                    f"Not starting: {address[0]}:{address[1]} is taken ({exc.strerror})"
                ) from None


def _empty_metrics_folder(path):
    # The numbers of a previous run's workers would be added to this run's.
    os.makedirs(path, exist_ok=True)
    for name in glob.glob(os.path.join(path, "*.db")):
        os.remove(name)


def when_ready(server):
    """Warn when the API listens beyond this machine with no token required."""
    from sessions_app import exposure

    warning = exposure.warning(_settings, server.cfg.address)
    if warning:
        server.log.warning(warning)


def child_exit(server, worker):
    """Drop a gone worker's live gauges, as prometheus_client's mark_process_dead does."""
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    for name in glob.glob(os.path.join(path, f"gauge_live*_{worker.pid}.db")):
        os.remove(name)


def post_worker_init(worker):
    """End this worker's long polls and streams at once when it is told to stop.

    Otherwise an open stream (up to STREAM_MAX_SECONDS) holds the worker
    until the graceful timeout and its SIGKILL: a restart took 30 s a worker.
    This runs in the worker, after its worker class set up, so importing the
    app here is safe.
    """
    import signal

    from sessions_app import feed

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        handler = signal.getsignal(signum)
        if callable(handler):
            signal.signal(signum, _stopping_first(feed.stop_waiting, handler))


def _stopping_first(stop_waiting, handler):
    def handle(signum, frame):
        stop_waiting()
        handler(signum, frame)

    return handle
