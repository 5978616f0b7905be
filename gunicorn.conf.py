"""Gunicorn settings for the Session API: every server setting lives here.

Environment variables override the values marked so; README.rst lists them.
"""

import os

bind = [os.environ.get("BIND") or f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"]

# Threads overlap the time a request waits on the database; one connection
# per thread (the pool size below) means no request waits for a connection.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
os.environ.setdefault("DATABASE_POOL_SIZE", str(threads))

keepalive = 5
timeout = 30
graceful_timeout = 30

# Gunicorn's control socket defaults to one path per user, shared by every
# instance on the host; give this service its own.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "var/gunicorn.ctl")

accesslog = "-"
logconfig_dict = {
    "root": {"level": os.environ.get("LOG_LEVEL", "INFO"), "handlers": ["error_console"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
    },
}


def on_starting(server):
    """Create the tables once, in the master, before any worker starts."""
    from sessions_app import create_app, db

    create_app()
    db.init_db()
    # No connection may cross the fork into the workers.
    db.database.close_all()
