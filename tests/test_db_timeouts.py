"""PostgreSQL connections carry the timeouts that turn an outage into a quick 503."""

import os

from servers import require

from sessions_app import config, create_app, db


def postgres(url, **settings):
    return db.make_database(config.load({"DATABASE_URL": url, **settings}))


def test_connections_get_the_configured_timeouts():
    database = postgres("postgresql://u@db.internal:5432/sessions")
    assert database.connect_params["connect_timeout"] == 3
    assert database.connect_params["options"] == (
        "-c statement_timeout=10000 -c idle_in_transaction_session_timeout=5000"
        " -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
    )
    assert database.connect_params["keepalives"] == 1
    assert database.connect_params["tcp_user_timeout"] == 10_000


def test_the_settings_change_them():
    database = postgres(
        "postgresql://u@db.internal/sessions",
        DATABASE_CONNECT_TIMEOUT=1,
        DATABASE_STATEMENT_TIMEOUT_MS=2500,
        DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS=1500,
    )
    assert database.connect_params["connect_timeout"] == 1
    assert database.connect_params["options"].startswith(
        "-c statement_timeout=2500 -c idle_in_transaction_session_timeout=1500 "
    )


def test_the_urls_own_values_win():
    database = postgres("postgresql://u@db.internal/sessions?connect_timeout=7")
    assert database.connect_params["connect_timeout"] == 7


def test_the_server_applies_the_statement_timeout():
    require(os.environ.get("TEST_DATABASE_URL"), "TEST_DATABASE_URL is not set")
    create_app(
        {
            "DATABASE_URL": os.environ["TEST_DATABASE_URL"],
            "DATABASE_STATEMENT_TIMEOUT_MS": 1234,
            "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS": 2345,
        }
    )
    try:
        with db.database.connection_context():
            shown = [
                db.database.execute_sql(f"SHOW {name}").fetchone()[0]
                for name in (
                    "statement_timeout",
                    "idle_in_transaction_session_timeout",
                    "tcp_keepalives_idle",
                )
            ]
    finally:
        db.database.close_all()
    assert shown == ["1234ms", "2345ms", "5"]
