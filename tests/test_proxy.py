"""TRUST_PROXY: the client's address and scheme come from the proxy only when configured."""

import logging

import pytest

from sessions_app import create_app, db

FORWARDED = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9", "X-Forwarded-Proto": "https"}


@pytest.fixture
def seen(tmp_path, caplog):
    """Return a function: make a request with ``TRUST_PROXY=hops``, return (client, scheme)."""

    def request_as_seen(hops):
        app = create_app(
            {
                "TESTING": True,
                "DATABASE_URL": f"sqlite:///{tmp_path}/s.sqlite3",
                "TRUST_PROXY": hops,
            }
        )
        try:
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="sessions_app.requests"):
                app.test_client().get(
                    "/health", headers=FORWARDED, environ_base={"REMOTE_ADDR": "10.0.0.1"}
                )
        finally:
            db.database.close_all()
        (line,) = [r.fields for r in caplog.records if r.name == "sessions_app.requests"]
        return line["client"], line["scheme"]

    return request_as_seen


def test_by_default_forwarded_headers_are_ignored(seen):
    assert seen(0) == ("10.0.0.1", "http")


def test_one_trusted_hop_takes_the_address_the_proxy_added(seen):
    # The proxy appends the address it saw; anything before it the client wrote.
    assert seen(1) == ("203.0.113.9", "https")


def test_trust_proxy_cannot_be_negative():
    with pytest.raises(ValueError, match="TRUST_PROXY"):
        create_app({"TRUST_PROXY": -1})
