"""Tokens scoped to agents (contract section 12): every path sees only the token's agents."""

import json
import threading
import time

import pytest
from test_feed_stream import STREAM, parse, read_all

from sessions_app import db, feed, scoping, tokenfile
from sessions_app.models import Session
from sessions_app.prepared import Prepared, ScopeMissing
from sessions_app.storage_errors import SessionNotFound

ALPHA, ALPHA_RO, BETA, ADMIN, ENV = "alpha-token", "alpha-ro-token", "beta-token", "admin", "env"
TOKENS_TOML = f"""
# Team alpha: its agents by prefix, and one by its exact id.
[[token]]
name = "alpha"
sha256 = "{tokenfile.digest(ALPHA)}"
access = "read-write"
agents = ["alpha-*", "solo"]

[[token]]
name = "alpha-reader"
sha256 = "{tokenfile.digest(ALPHA_RO)}"
access = "read-only"
agents = ["alpha-*"]

# The same shape as alpha's scope (one prefix, one id): other values.
[[token]]
name = "beta"
sha256 = "{tokenfile.digest(BETA)}"
access = "read-write"
agents = ["beta-*", "other"]

[[token]]
name = "admin"
sha256 = "{tokenfile.digest(ADMIN)}"
access = "read-write"
"""


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def scoped_app(database_url, tmp_path, make_app):
    path = tmp_path / "tokens.toml"
    path.write_text(TOKENS_TOML)
    app = make_app(database_url, SESSIONS_API_TOKENS_FILE=str(path), SESSIONS_API_TOKENS=ENV)
    yield app
    db.database.close_all()


class As:
    """A client that sends one token with every request."""

    def __init__(self, app, token):
        self.client, self.headers = app.test_client(), bearer(token)

    def __getattr__(self, method):
        def call(path, **kwargs):
            headers = {**self.headers, **kwargs.pop("headers", {})}
            return getattr(self.client, method)(path, headers=headers, **kwargs)

        return call

    def create(self, agent_id, **body):
        response = self.post("/api/sessions", json={"agent_id": agent_id, **body})
        assert response.status_code == 201, response.get_json()
        return response.get_json()["id"]


@pytest.fixture
def world(scoped_app):
    """Sessions of alpha's agents and of beta's, made by the admin; beta's has a message
    and beta has a deleted session (a tombstone in the feed)."""
    admin = As(scoped_app, ADMIN)
    ids = {
        "alpha": admin.create("alpha-1"),
        "solo": admin.create("solo"),
        "beta": admin.create("beta-1"),
        "lookalike": admin.create("ALPHA-1"),  # case counts: not alpha's
        "bare": admin.create("alpha"),  # "alpha-*" needs the dash
    }
    assert admin.post(f"/api/sessions/{ids['beta']}/message", json={"content": "hi"}).status_code
    gone = admin.create("beta-2")
    assert admin.delete(f"/api/sessions/{gone}").status_code == 204
    ids["gone"] = gone
    return ids


def not_found(session_id):
    return {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": f"No session has the id {session_id!r}.",
    }


def body_without_instance(response):
    body = response.get_json()
    body.pop("instance", None)
    return body


MISSING = "session-0000000000000000000000000000"


def test_the_list_and_the_count_hold_only_the_tokens_agents(scoped_app, world):
    alpha = As(scoped_app, ALPHA)
    listed = alpha.get("/api/sessions").get_json()["sessions"]
    assert sorted(s["id"] for s in listed) == sorted([world["alpha"], world["solo"]])
    # Filters narrow further; they never widen.
    assert alpha.get("/api/sessions?agent_id=beta-1").get_json()["sessions"] == []
    only = alpha.get("/api/sessions?agent_id=solo&limit=1").get_json()["sessions"]
    assert [s["id"] for s in only] == [world["solo"]]
    assert alpha.get("/api/sessions?status=created,active").get_json()["sessions"] != []
    counted = alpha.get("/api/sessions/count").get_json()
    assert counted["count"] == 2
    assert alpha.get("/api/sessions/count?agent_id=beta-1").get_json()["count"] == 0
    admin = As(scoped_app, ADMIN)
    assert admin.get("/api/sessions/count").get_json()["count"] == 5
    assert As(scoped_app, ENV).get("/api/sessions/count").get_json()["count"] == 5


@pytest.mark.parametrize(
    "method, suffix, body",
    [
        ("get", "", None),
        ("patch", "", {"status": "paused"}),
        ("delete", "", None),
        ("get", "/messages", None),
        ("get", "/messages?wait=1", None),
        ("post", "/message", {"content": "x"}),
        ("post", "/messages", {"content": "x"}),
    ],
)
def test_another_agents_session_is_a_404_as_a_missing_one(
    scoped_app, world, count_queries, method, suffix, body
):
    alpha = As(scoped_app, ALPHA)
    kwargs = {} if body is None else {"json": body}
    path, _, query = suffix.partition("?")
    with count_queries() as missing_queries:
        missing = getattr(alpha, method)(f"/api/sessions/{MISSING}{path}?{query}", **kwargs)
    with count_queries() as hidden_queries:
        hidden = getattr(alpha, method)(f"/api/sessions/{world['beta']}{path}?{query}", **kwargs)
    assert missing.status_code == hidden.status_code == 404
    assert body_without_instance(missing) == not_found(MISSING)
    assert body_without_instance(hidden) == not_found(world["beta"])
    assert dict(hidden.headers).keys() == dict(missing.headers).keys()
    # The same statements (the id aside): nothing a real session alone would cost.
    assert len(hidden_queries) == len(missing_queries)
    assert [sql for sql, _ in hidden_queries.queries] == [sql for sql, _ in missing_queries.queries]
    # Nothing changed.
    seen = As(scoped_app, ADMIN).get(f"/api/sessions/{world['beta']}").get_json()
    assert (seen["status"], seen["message_count"], seen["version"]) == ("active", 1, 2)


def test_the_tokens_own_sessions_work_on_every_path(scoped_app, world):
    alpha = As(scoped_app, ALPHA)
    path = f"/api/sessions/{world['solo']}"
    assert alpha.get(path).status_code == 200
    assert alpha.get(path, headers={"If-None-Match": '"1"'}).status_code == 304
    assert alpha.patch(path, json={"status": "active"}).status_code == 200
    assert alpha.post(f"{path}/message", json={"content": "x"}).status_code == 201
    assert len(alpha.get(f"{path}/messages").get_json()["messages"]) == 1
    assert alpha.delete(path, headers={"If-Match": "*"}).status_code == 204


def test_if_none_match_and_if_match_on_another_agents_session_are_404s(scoped_app, world):
    alpha = As(scoped_app, ALPHA)
    path = f"/api/sessions/{world['beta']}"
    assert alpha.get(path, headers={"If-None-Match": '"2"'}).status_code == 404
    assert alpha.patch(path, json={"prompt": "x"}, headers={"If-Match": "*"}).status_code == 404
    assert alpha.delete(path, headers={"If-Match": "*"}).status_code == 404


def test_creating_for_another_agent_is_a_403_naming_agent_id(scoped_app):
    alpha = As(scoped_app, ALPHA)
    response = alpha.post("/api/sessions", json={"agent_id": "beta-1"})
    assert response.status_code == 403
    assert response.mimetype == "application/problem+json"
    assert body_without_instance(response) == {
        "type": "about:blank",
        "title": "Forbidden",
        "status": 403,
        "detail": "This token may not act for the agent 'beta-1'.",
        "errors": {"agent_id": ["Not an agent this token may act for."]},
    }
    assert As(scoped_app, ADMIN).get("/api/sessions/count").get_json()["count"] == 0
    alpha.create("alpha-new")
    alpha.create("solo")


def test_a_read_only_scoped_token_reads_its_agents_only(scoped_app, world):
    reader = As(scoped_app, ALPHA_RO)
    assert [s["id"] for s in reader.get("/api/sessions").get_json()["sessions"]] == [world["alpha"]]
    assert reader.get(f"/api/sessions/{world['solo']}").status_code == 404
    assert reader.patch(f"/api/sessions/{world['alpha']}", json={}).status_code == 403


def test_two_scopes_of_one_shape_each_see_their_own(scoped_app, world):
    # Both scopes are one id and one prefix: one cached statement, other values.
    alpha, beta = As(scoped_app, ALPHA), As(scoped_app, BETA)
    for _ in range(2):
        assert alpha.get(f"/api/sessions/{world['alpha']}").status_code == 200
        assert beta.get(f"/api/sessions/{world['alpha']}").status_code == 404
        assert beta.get(f"/api/sessions/{world['beta']}").status_code == 200
        assert alpha.get(f"/api/sessions/{world['beta']}").status_code == 404


def agents_of(changes):
    return {c["agent_id"] for c in changes}


def test_the_change_feed_holds_only_the_tokens_agents_tombstones_included(scoped_app, world):
    alpha, beta = As(scoped_app, ALPHA), As(scoped_app, BETA)
    page = alpha.get("/api/changes").get_json()
    assert agents_of(page["changes"]) == {"alpha-1", "solo"}
    seen = beta.get("/api/changes?type=session.deleted").get_json()["changes"]
    assert [(c["session_id"], c["agent_id"]) for c in seen] == [(world["gone"], "beta-2")]
    assert alpha.get("/api/changes?type=session.deleted").get_json()["changes"] == []
    assert alpha.get(f"/api/changes?session_id={world['beta']}").get_json()["changes"] == []
    # The cursor still covers what the page looked at.
    everything = As(scoped_app, ADMIN).get("/api/changes").get_json()
    assert page["next_cursor"] == everything["next_cursor"]


def test_a_long_poll_wakes_only_for_the_tokens_agents(scoped_app, world):
    alpha, admin = As(scoped_app, ALPHA), As(scoped_app, ADMIN)
    cursor = admin.get("/api/changes?cursor=latest").get_json()["next_cursor"]
    answer = {}
    poll = threading.Thread(
        target=lambda: answer.update(alpha.get(f"/api/changes?cursor={cursor}&wait=10").get_json())
    )
    poll.start()
    # Write only once the poll waits: beta's change must be offered to it.
    hub = feed.current_hub()
    while len(hub.subscriptions) == 0 and poll.is_alive():
        time.sleep(0.01)
    admin.post(f"/api/sessions/{world['beta']}/message", json={"content": "not for alpha"})
    admin.post(f"/api/sessions/{world['alpha']}/message", json={"content": "for alpha"})
    poll.join(timeout=30)
    assert [(c["agent_id"], c["type"]) for c in answer["changes"]] == [
        ("alpha-1", "message.created")
    ]


def test_a_stream_keeps_its_scope_after_its_request_ended(scoped_app, world):
    scoped_app.config.update(STREAM_MAX_SECONDS=1, STREAM_HEARTBEAT_SECONDS=1)
    client = scoped_app.test_client()
    # The stream's reads run while the body is iterated, after the request's teardown.
    response = client.get(
        "/api/changes?cursor=0", headers={**STREAM, **bearer(ALPHA)}, buffered=False
    )
    events, _comments = parse(read_all(response))
    assert {json.loads(e["data"])["agent_id"] for e in events} == {"alpha-1", "solo"}


def test_a_prepared_statement_run_under_a_scope_must_apply_it(scoped_app):
    forgetful = Prepared(lambda session_id: Session.select().where(Session.id == session_id))
    with scoped_app.app_context(), db.database.connection_context():
        assert forgetful.rows(session_id=MISSING) == []  # unscoped: fine
        with scoping.using(scoping.Scope.of(["a"])), pytest.raises(ScopeMissing):
            forgetful.rows(session_id=MISSING)


@pytest.mark.parametrize(
    "agents, inside, outside",
    [
        (
            ["alpha-*"],
            ["alpha-", "alpha-1", "alpha-%", "alpha-ü"],
            ["alpha", "ALPHA-1", "xalpha-1"],
        ),
        (["a_b", "50%*"], ["a_b", "50%", "50%x"], ["axb", "a_bc", "50x", "5"]),
        (["ü*", "solo"], ["ü", "üx", "solo"], ["u", "solo2", "Ü"]),
        (["b\\s*"], ["b\\s", "b\\s1"], ["bs", "b\\", "b\\\\s"]),
    ],
)
def test_the_sql_condition_agrees_with_allows(scoped_app, agents, inside, outside):
    admin = As(scoped_app, ADMIN)
    ids = {agent: admin.create(agent) for agent in inside + outside}
    scope = scoping.Scope.of(agents)
    assert all(scope.allows(a) for a in inside)
    assert not any(scope.allows(a) for a in outside)
    with scoped_app.app_context(), db.database.connection_context(), scoping.using(scope):
        found = {row["agent_id"] for row in Session.page(limit=100)}
        assert found == set(inside)
        for agent in inside + outside:
            try:
                Session.fetch(ids[agent])
            except SessionNotFound:
                assert agent in outside
            else:
                assert agent in inside


# -- every route, with a scoped token, against another agent's session -------------------

#: Session-less routes: what each may answer a scoped token.  A route added
#: to the app must be added here (or take a session id), so that someone
#: decides what it shows a scoped token.
SESSIONLESS = {
    ("sessions.list_sessions", "GET"): 200,
    ("sessions.count_sessions", "GET"): 200,
    ("sessions.create_session", "POST"): 403,
    ("sessions.list_changes", "GET"): 200,
    ("sessions.bulk_change", "POST"): 200,
    ("metrics.scrape", "GET"): 200,
    ("health.health", "GET"): 200,
    ("openapi.openapi_document", "GET"): 200,
    ("swagger_ui.show", "GET"): {200, 308, 404},
    ("static", "GET"): 404,
}
#: A valid body for each method taking one (a 422 would answer before the scope).
BODIES = {
    "PATCH": {"prompt": "x"},
    "POST": {"content": "x"},
    "sessions.create_session": {"agent_id": "beta-1"},
    # Aimed at beta's sessions: a scoped token matches none of them.
    "sessions.bulk_change": {"filter": {"agent_id": "beta-1"}, "set": {"status": "failed"}},
}


def test_every_route_hides_another_agents_session(scoped_app, world):
    alpha, admin = As(scoped_app, ALPHA), As(scoped_app, ADMIN)
    before = admin.get(f"/api/sessions/{world['beta']}").get_json()
    checked = set()
    for rule in scoped_app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            values = {arg: "x" for arg in rule.arguments}
            if "session_id" in rule.arguments:
                values["session_id"] = world["beta"]
            path = rule.build(values, append_unknown=False)[1]
            body = BODIES.get(rule.endpoint, BODIES.get(method))
            response = alpha.open(path, method=method, **({} if body is None else {"json": body}))
            where = f"{method} {rule.rule}"
            if "session_id" in rule.arguments:
                assert response.status_code == 404, where
                assert body_without_instance(response) == not_found(world["beta"]), where
                continue
            expected = SESSIONLESS.get((rule.endpoint, method))
            assert expected is not None, f"{where}: say in SESSIONLESS what it answers"
            expected = expected if isinstance(expected, set) else {expected}
            assert response.status_code in expected, where
            text = response.get_data(as_text=True)
            assert world["beta"] not in text and "beta-1" not in text.replace(
                "'beta-1'",
                "",  # the 403 names the agent the client itself sent
            ), where
            checked.add((rule.endpoint, method))
    assert checked == set(SESSIONLESS)
    assert admin.get(f"/api/sessions/{world['beta']}").get_json() == before


def test_a_bulk_change_reaches_only_the_tokens_agents(scoped_app, world):
    alpha, admin = As(scoped_app, ALPHA), As(scoped_app, ADMIN)
    everything = {"filter": {"all": True}, "set": {"status": "failed"}}
    dry = alpha.post("/api/sessions/bulk", json={**everything, "dry_run": True}).get_json()
    assert dry["matched"] == 2 and dry["remaining"] == 0
    done = alpha.post("/api/sessions/bulk", json=everything).get_json()
    assert (done["matched"], done["changed"]) == (2, 2)
    statuses = {
        name: admin.get(f"/api/sessions/{world[name]}").get_json()["status"]
        for name in ("alpha", "solo", "beta", "lookalike", "bare")
    }
    assert statuses == {
        "alpha": "failed",
        "solo": "failed",
        "beta": "active",
        "lookalike": "created",
        "bare": "created",
    }
    deleted = alpha.post("/api/sessions/bulk", json={"filter": {"all": True}, "delete": True})
    assert deleted.get_json()["changed"] == 2
    assert admin.get(f"/api/sessions/{world['beta']}").status_code == 200


# -- idempotency keys, the log, metrics ---------------------------------------------------


def test_idempotency_keys_stay_per_token(scoped_app):
    alpha, admin = As(scoped_app, ALPHA), As(scoped_app, ADMIN)
    key = {"Idempotency-Key": "k-1"}
    first = alpha.post("/api/sessions", json={"agent_id": "alpha-9"}, headers=key)
    replay = alpha.post("/api/sessions", json={"agent_id": "alpha-9"}, headers=key)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json() == first.get_json()
    other = admin.post("/api/sessions", json={"agent_id": "alpha-9"}, headers=key)
    assert other.status_code == 201 and "Idempotent-Replayed" not in other.headers
    assert other.get_json()["id"] != first.get_json()["id"]


def test_the_request_log_names_the_token_never_the_token_itself(scoped_app, caplog):
    with caplog.at_level("INFO", logger="sessions_app"):
        As(scoped_app, ALPHA).get("/api/sessions")
        As(scoped_app, ENV).get("/api/sessions")
        As(scoped_app, "wrong").get("/api/sessions")
    lines = [r.fields for r in caplog.records if r.name == "sessions_app.requests"]
    assert [line["token"] for line in lines] == ["alpha", "SESSIONS_API_TOKENS#1", None]
    assert ALPHA not in caplog.text and tokenfile.digest(ALPHA) not in caplog.text


def test_metrics_count_requests_per_token_name(scoped_app):
    def count(name):
        text = scoped_app.test_client().get("/metrics").get_data(as_text=True)
        label = f'sessions_http_requests_by_token_total{{token="{name}"}} '
        found = [line for line in text.splitlines() if line.startswith(label)]
        return float(found[0].split()[-1]) if found else 0.0

    before = count("alpha-reader")
    for _ in range(3):
        As(scoped_app, ALPHA_RO).get("/api/sessions")
    assert count("alpha-reader") == before + 3
    assert ALPHA_RO not in scoped_app.test_client().get("/metrics").get_data(as_text=True)
