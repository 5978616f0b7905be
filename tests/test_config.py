"""config: defaults in code, then the environment, then a mapping."""

import pytest

from sessions_app import config


def test_defaults_without_environment():
    # The defaults README.rst's configuration tables promise.
    assert config.load(environ={}) == {
        "DATABASE_URL": "sqlite:///var/sessions.sqlite3",
        "DATABASE_POOL_SIZE": 2,
        "DATABASE_POOL_TIMEOUT": 10,
        "SQLITE_BUSY_TIMEOUT_MS": 10_000,
        "MAX_BODY_BYTES": 1_048_576,
        "RETRY_AFTER_SECONDS": 2,
        "DATABASE_CONNECT_TIMEOUT": 3,
        "DATABASE_STATEMENT_TIMEOUT_MS": 10_000,
        "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS": 5_000,
        "TRUST_PROXY": 0,
        "SESSIONS_API_TOKENS": "",
        "SESSIONS_API_READONLY_TOKENS": "",
        "SESSIONS_API_TOKENS_FILE": "",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
        "GUNICORN_THREADS": 2,
        "SESSION_RETENTION_SECONDS": None,
        "IDEMPOTENCY_TTL_SECONDS": 86_400,
        "CHANGES_RETENTION_SECONDS": 604_800,
        "STREAM_MAX_SECONDS": 300,
        "STREAM_HEARTBEAT_SECONDS": 15,
        "FEED_WAITERS_MAX": 500,
        "STREAM_BACKLOG_MAX": 10_000,
    }


def test_the_pool_follows_the_threads_unless_set():
    assert config.load(environ={"GUNICORN_THREADS": "5"})["DATABASE_POOL_SIZE"] == 5
    both = {"GUNICORN_THREADS": "5", "DATABASE_POOL_SIZE": "3"}
    assert config.load(environ=both)["DATABASE_POOL_SIZE"] == 3


def test_environment_overrides_defaults_with_types():
    environ = {"DATABASE_URL": "postgresql://db/x", "MAX_BODY_BYTES": "2048", "UNRELATED": "1"}
    loaded = config.load(environ=environ)
    assert loaded["DATABASE_URL"] == "postgresql://db/x"
    assert loaded["MAX_BODY_BYTES"] == 2048
    assert "UNRELATED" not in loaded


def test_mapping_overrides_environment():
    loaded = config.load({"MAX_BODY_BYTES": 10, "TESTING": True}, environ={"MAX_BODY_BYTES": "20"})
    assert loaded["MAX_BODY_BYTES"] == 10
    assert loaded["TESTING"] is True


def test_from_environ_reads_only_known_names():
    assert config.from_environ({"PATH": "/bin", "DATABASE_POOL_SIZE": "4"}) == {
        "DATABASE_POOL_SIZE": 4
    }


def test_environment_is_read_when_loading_not_at_import(monkeypatch):
    monkeypatch.setenv("RETRY_AFTER_SECONDS", "7")
    assert config.load()["RETRY_AFTER_SECONDS"] == 7


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MAX_BODY_BYTES": "1MB"}, "MAX_BODY_BYTES='1MB' is not a valid int"),
        ({"DATABASE_POOL_SIZE": ""}, "DATABASE_POOL_SIZE='' is not a valid int"),
        ({"MAX_BODY_BYTES": "0"}, "MAX_BODY_BYTES must be at least 1, not 0"),
        ({"DATABASE_POOL_SIZE": "-1"}, "DATABASE_POOL_SIZE must be at least 1, not -1"),
        ({"SQLITE_BUSY_TIMEOUT_MS": "0"}, "SQLITE_BUSY_TIMEOUT_MS must be at least 1, not 0"),
        ({"GUNICORN_THREADS": "0"}, "GUNICORN_THREADS must be at least 1, not 0"),
    ],
)
def test_bad_values_are_refused_with_their_name(environ, message):
    with pytest.raises(ValueError) as raised:
        config.load(environ=environ)
    assert str(raised.value) == message


def test_session_retention_is_unset_by_default_and_read_in_seconds():
    assert config.load(environ={})["SESSION_RETENTION_SECONDS"] is None
    loaded = config.load(environ={"SESSION_RETENTION_SECONDS": "86400"})
    assert loaded["SESSION_RETENTION_SECONDS"] == 86400


@pytest.mark.parametrize("value", ["0", "-1"])
def test_session_retention_must_be_a_second_or_more(value):
    with pytest.raises(ValueError, match="SESSION_RETENTION_SECONDS must be at least 1"):
        config.load(environ={"SESSION_RETENTION_SECONDS": value})
