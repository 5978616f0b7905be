"""Gunicorn settings for the Session API: every server setting lives here.

Environment variables override the values marked so; README.rst lists them.
"""

import os

from gunicorn import glogging

# Every worker writes its metrics here for /metrics to add up; it must be set
# before sessions_app (and so prometheus_client) is imported below.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", "var/prometheus")

from sessions_app.config import load as _load_settings  # noqa: E402
from sessions_app.logs import dict_config as _log_config  # noqa: E402

# Named with a leading underscore: Gunicorn reads every other name as a setting.
_settings = _load_settings()

# BIND=unix:/run/sessions-app/gunicorn.sock behind nginx (deploy/).
bind = [
    os.environ.get("BIND")
    or f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
]
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
# One connection per thread that serves ordinary requests (the pool size
# below): no such request waits for one.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
_request_threads = int(os.environ.get("GUNICORN_THREADS", "2"))
# Waiting requests (long polls with ``wait``, event streams) hold a thread
# each while they wait, but no database connection, and cost nothing while
# they wait (sessions_app/waiting.py).  Each worker has a thread for each of
# its FEED_WAITERS_MAX waiting slots on top of the threads for ordinary
# requests; a waiter beyond the slots gets a 503 at once, so waiters can
# never take the threads ordinary requests need.
# Measured with benchmarks/feed.py (README.rst, Performance) on 2 cores
# shared with other work (load average 7 to 11): with 1,000 long polls and
# 100 streams held, gets kept 0.94x (SQLite) and 0.98x (PostgreSQL) of
# their throughput alone, messages 0.73x and 1.04x; workers 54 to 61 MB;
# idle, the 1,100 waiters cost the 4 workers 1.1 s of CPU per 10 s.
# The gevent worker was not measured: it needs peewee's connection state
# to be greenlet-local (peewee imported after the patch, which this file's
# imports of the app prevent today), and a SQLite call would stop every
# greenlet of its worker while it runs.
threads = _request_threads + _settings["FEED_WAITERS_MAX"]
# The watcher thread reads the feed with a pooled connection too.
os.environ.setdefault("DATABASE_POOL_SIZE", str(_request_threads + 1))

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

# The app writes one line per request (sessions_app.logs), so no access log
# here; Gunicorn's own lines come out in the app's format, on stdout.
accesslog = None
logconfig_dict = _log_config(_settings["LOG_LEVEL"], _settings["LOG_FORMAT"])


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
    """Empty the metrics directory and create the tables, once, before any worker starts."""
    from sessions_app import create_app, db, metrics, migrations

    metrics.empty_multiprocess_dir()
    create_app()
    migrations.upgrade()
    # No connection may cross the fork into the workers.
    db.database.close_all()


def when_ready(server):
    """Warn when the API listens beyond this machine with no token required."""
    from sessions_app import auth

    warning = auth.exposure_warning(_settings, server.cfg.address)
    if warning:
        server.log.warning(warning)


def child_exit(server, worker):
    """Tell prometheus_client a worker is gone, so its live gauges stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
