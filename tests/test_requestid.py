"""Request ids: taken from X-Request-ID when sane, else made; echoed; the problem's instance."""

import re

import pytest

from sessions_app import requestid

GENERATED = re.compile(r"[0-9a-f]{32}").fullmatch
UNKNOWN = "/api/sessions/session-0000000000000000000000000000"


@pytest.mark.parametrize("sent", ["abc", "0f3c-9a.b_C", "x" * 128, "7d0e6f1e2b3c4d5e"])
def test_a_sane_id_is_kept_and_echoed(client, sent):
    response = client.get("/health", headers={"X-Request-ID": sent})
    assert response.headers["X-Request-ID"] == sent


@pytest.mark.parametrize(
    "sent",
    ["", "x" * 129, "has space", "semi;colon", "quote\"", "tab\there", "é", "a/b", "{json}"],
    ids=["empty", "too-long", "space", "semicolon", "quote", "tab", "non-ascii", "slash",
         "braces"],
)  # fmt: skip
def test_an_insane_id_is_replaced_by_a_new_one(client, sent):
    response = client.get("/health", headers={"X-Request-ID": sent})
    assert GENERATED(response.headers["X-Request-ID"])


def test_each_request_without_an_id_gets_its_own(client):
    first = client.get("/health").headers["X-Request-ID"]
    second = client.get("/health").headers["X-Request-ID"]
    assert GENERATED(first) and GENERATED(second) and first != second


def test_the_id_is_the_problem_documents_instance(client):
    response = client.get(UNKNOWN, headers={"X-Request-ID": "trace-404"})
    assert response.status_code == 404
    assert response.headers["X-Request-ID"] == "trace-404"
    assert response.get_json()["instance"] == "trace-404"


def test_a_made_up_id_is_the_instance_too(client):
    response = client.post("/api/sessions", data="[", content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["instance"] == response.headers["X-Request-ID"]


def test_there_is_no_id_outside_a_request(app):
    assert requestid.current() is None
