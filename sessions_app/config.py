"""Configuration: defaults in code, then the environment, then a mapping.

Every setting is read when the app is created, never at import time.  Each
name below is both an ``app.config`` key and the environment variable that
sets it.  ``gunicorn.conf.py`` reads them here too: this module imports
nothing but the standard library, so the Gunicorn master loads no app code.
"""

import os

#: name -> (default, type); README.rst lists the same names in one table
#: (tests/test_config.py checks its defaults against these).
SETTINGS = {
    "DATABASE_URL": ("sqlite:///var/sessions.sqlite3", str),
    # None: one connection per thread of a Gunicorn worker, so no request
    # waits for one.
    "DATABASE_POOL_SIZE": (None, int),
    "DATABASE_POOL_TIMEOUT": (10, int),
    "SQLITE_BUSY_TIMEOUT_MS": (10_000, int),
    "MAX_BODY_BYTES": (1_048_576, int),
    "RETRY_AFTER_SECONDS": (2, int),
    "DATABASE_CONNECT_TIMEOUT": (3, int),
    "DATABASE_STATEMENT_TIMEOUT_MS": (10_000, int),
    # A transaction of the service's that sits idle this long is ended by
    # the server, so a stalled worker frees the feed's append lock.
    "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS": (5_000, int),
    "TRUST_PROXY": (0, int),
    "SESSIONS_API_TOKENS": ("", str),
    "SESSIONS_API_READONLY_TOKENS": ("", str),
    # A TOML file of named tokens, by SHA-256, optionally scoped (tokenfile.py).
    "SESSIONS_API_TOKENS_FILE": ("", str),
    "LOG_LEVEL": ("INFO", str),
    "LOG_FORMAT": ("json", str),
    "GUNICORN_THREADS": (2, int),
    # Unset: no session expires (see retention.py).
    "SESSION_RETENTION_SECONDS": (None, int),
    "IDEMPOTENCY_TTL_SECONDS": (86_400, int),
    "CHANGES_RETENTION_SECONDS": (7 * 24 * 3600, int),
    "STREAM_MAX_SECONDS": (300, int),
    "STREAM_HEARTBEAT_SECONDS": (15, int),
    "FEED_WAITERS_MAX": (500, int),
    "STREAM_BACKLOG_MAX": (10_000, int),
}

LOG_FORMATS = ("json", "text")


def from_environ(environ=None):
    """Return the settings found in ``environ``, converted to their types."""
    environ = os.environ if environ is None else environ
    found = {}
    for name, (_default, kind) in SETTINGS.items():
        if name in environ:
            try:
                found[name] = kind(environ[name])
            except ValueError:
                raise ValueError(
                    f"{name}={environ[name]!r} is not a valid {kind.__name__}"
                ) from None
    return found


def load(mapping=None, environ=None):
    """Return the whole configuration: defaults, environment, then ``mapping``."""
    config = {name: default for name, (default, _kind) in SETTINGS.items()}
    config.update(from_environ(environ))
    config.update(mapping or {})
    if config["DATABASE_POOL_SIZE"] is None:
        config["DATABASE_POOL_SIZE"] = config["GUNICORN_THREADS"]
    for name in (
        "GUNICORN_THREADS",
        "DATABASE_POOL_SIZE",
        "MAX_BODY_BYTES",
        "SQLITE_BUSY_TIMEOUT_MS",
        "IDEMPOTENCY_TTL_SECONDS",
        "CHANGES_RETENTION_SECONDS",
        "STREAM_MAX_SECONDS",
        "STREAM_HEARTBEAT_SECONDS",
        "FEED_WAITERS_MAX",
        "STREAM_BACKLOG_MAX",
        "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS",
    ):
        if config[name] < 1:
            raise ValueError(f"{name} must be at least 1, not {config[name]}")
    if config["LOG_FORMAT"] not in LOG_FORMATS:
        raise ValueError(
            f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {config['LOG_FORMAT']!r}"
        )
    retention = config["SESSION_RETENTION_SECONDS"]
    if retention is not None and retention < 1:
        raise ValueError(
            f"SESSION_RETENTION_SECONDS must be at least 1 (or unset), not {retention}"
        )
    if config["TRUST_PROXY"] < 0:
        raise ValueError(f"TRUST_PROXY must be 0 (no proxy) or more, not {config['TRUST_PROXY']}")
    return config
