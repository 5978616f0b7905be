"""The conventions every endpoint shares: problem bodies, 400/405/413/415/422/503."""

import io
import json

import pytest
from problems import (
    BAD_TEXT,
    INVALID,
    assert_no_leak,
    assert_problem,
    assert_unavailable,
    invalid,
    problem,
)
from werkzeug.test import EnvironBuilder

from sessions_app import create_app, db, migrations

SID = "session-0000000000000000000000000000"
BODY_ENDPOINTS = [
    ("post", "/api/sessions"),
    ("patch", "/api/sessions/{id}"),
    ("post", "/api/sessions/{id}/message"),
    ("post", "/api/sessions/{id}/messages"),
]
ALL_ENDPOINTS = [
    ("get", "/api/sessions"),
    ("get", "/api/sessions/{id}"),
    ("delete", "/api/sessions/{id}"),
    ("get", "/api/sessions/{id}/messages"),
    *BODY_ENDPOINTS,
]


@pytest.fixture
def session(api):
    session = api.create(data={"k": "v"}, prompt="p")
    api.send(session["id"], "first")
    return api.get(session["id"])


def snapshot(api):
    sessions = api.list()["sessions"]
    return [(api.get(s["id"]), api.messages(s["id"])) for s in sessions]


def call(client, method, path, session, **kwargs):
    return getattr(client, method)(path.format(id=session["id"]), **kwargs)


@pytest.mark.parametrize(("method", "path"), BODY_ENDPOINTS)
@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        (None, None),
        (None, b'{"content": "x", "agent_id": "x"}'),
        ("text/plain", b'{"content": "x", "agent_id": "x"}'),
        ("application/x-www-form-urlencoded", b"content=x&agent_id=x"),
        ("application/merge-patch+json", b'{"content": "x", "agent_id": "x"}'),
        ("application/problem+json", b'{"content": "x", "agent_id": "x"}'),
        ("Application/JSONX", b'{"content": "x", "agent_id": "x"}'),
        ("multipart/form-data; boundary=x", b"--x--"),
    ],
)
def test_a_body_that_is_not_json_is_415(api, client, session, method, path, content_type, data):
    before = snapshot(api)
    kwargs = {"data": data}
    if content_type is not None:
        kwargs["content_type"] = content_type
    response = call(client, method, path, session, **kwargs)
    assert_problem(
        response, problem(415, "Send the body as JSON, with Content-Type: application/json.")
    )
    assert snapshot(api) == before


@pytest.mark.parametrize(("method", "path"), BODY_ENDPOINTS)
@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"", "The body is not valid JSON: Expecting value: line 1 column 1 (char 0)."),
        (
            b"{",
            "The body is not valid JSON: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1).",
        ),
        (
            b"{'a': 1}",
            "The body is not valid JSON: Expecting property name enclosed in double "
            "quotes: line 1 column 2 (char 1).",
        ),
        (b'{"a": 1} x', "The body is not valid JSON: Extra data: line 1 column 10 (char 9)."),
        (b'{"a": NaN}', "The body is not valid JSON: NaN is not valid JSON."),
        (b'{"a": Infinity}', "The body is not valid JSON: Infinity is not valid JSON."),
        (b"\xff\xfe{}", "The body is not valid UTF-8."),
        (b'{"a": "\xc3"}', "The body is not valid UTF-8."),
        (b"[" * 100_000 + b"]" * 100_000, "The body is nested too deeply."),
        (b"[]", "The body must be a JSON object."),
        (b"null", "The body must be a JSON object."),
        (b'"text"', "The body must be a JSON object."),
        (b"42", "The body must be a JSON object."),
        (b"true", "The body must be a JSON object."),
        (b'[{"content": "x"}]', "The body must be a JSON object."),
    ],
)
def test_a_body_that_is_not_a_json_object_is_400(api, client, session, method, path, data, detail):
    before = snapshot(api)
    response = call(client, method, path, session, data=data, content_type="application/json")
    assert_problem(response, problem(400, detail))
    assert snapshot(api) == before


@pytest.mark.parametrize(("method", "path"), BODY_ENDPOINTS)
def test_a_body_over_the_limit_is_413(api, client, session, method, path):
    before = snapshot(api)
    body = json.dumps({"agent_id": "x", "content": "x", "prompt": "p" * (1 << 20)})
    response = call(client, method, path, session, data=body, content_type="application/json")
    assert_problem(response, problem(413, "The data value transmitted exceeds the capacity limit."))
    assert snapshot(api) == before


def test_the_body_limit_is_configurable(database_url):
    app = create_app({"TESTING": True, "DATABASE_URL": database_url, "MAX_BODY_BYTES": 100})
    migrations.upgrade()
    client = app.test_client()
    body = json.dumps({"agent_id": "x", "prompt": "p" * 100})
    small = json.dumps({"agent_id": "x", "prompt": "p" * 50})
    try:
        response = client.post("/api/sessions", data=body, content_type="application/json")
        assert_problem(
            response, problem(413, "The data value transmitted exceeds the capacity limit.")
        )
        assert (
            client.post("/api/sessions", data=small, content_type="application/json").status_code
            == 201
        )
    finally:
        db.database.close_all()


@pytest.mark.parametrize(("padding", "status"), [(0, 201), (1, 413), (10_000, 413)])
def test_a_chunked_body_over_the_limit_is_413(database_url, padding, status):
    # Sent chunked, a body has no Content-Length to check before reading it.
    app = create_app({"TESTING": True, "DATABASE_URL": database_url, "MAX_BODY_BYTES": 100})
    migrations.upgrade()
    body = json.dumps({"agent_id": "x", "prompt": ""}).encode()
    body = body[:-2] + b"p" * (100 - len(body)) + b'"}' + b" " * padding
    environ = EnvironBuilder(
        "/api/sessions",
        method="POST",
        input_stream=io.BytesIO(body),
        content_type="application/json",
    ).get_environ()
    del environ["CONTENT_LENGTH"]
    environ["wsgi.input_terminated"] = True
    try:
        response = app.test_client().open(environ)
        assert response.status_code == status, response.get_json()
        if status == 413:
            assert_problem(
                response, problem(413, "The data value transmitted exceeds the capacity limit.")
            )
    finally:
        db.database.close_all()


@pytest.mark.parametrize(("method", "path"), ALL_ENDPOINTS)
@pytest.mark.parametrize(
    ("query", "errors"),
    [
        ("unknown=1", {"unknown": ["Unknown field."]}),
        ("a=1&b=2", {"a": ["Unknown field."], "b": ["Unknown field."]}),
        ("a%00=1", {"a\x00": ["Unknown field."]}),
        ("x=1&x=2", {"x": ["Given more than once."]}),
    ],
)
def test_unknown_query_parameters_are_422_everywhere(
    api, client, session, method, path, query, errors
):
    before = snapshot(api)
    body = {"agent_id": "x", "content": "x", "status": "completed"}
    kwargs = {"json": body} if (method, path) in BODY_ENDPOINTS else {}
    response = call(client, method, f"{path}?{query}", session, **kwargs)
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["detail"] == INVALID
    assert response.get_json()["errors"].items() >= errors.items()
    assert_no_leak(response)
    assert snapshot(api) == before


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("put", "/api/sessions", {"GET", "HEAD", "OPTIONS", "POST"}),
        ("delete", "/api/sessions", {"GET", "HEAD", "OPTIONS", "POST"}),
        ("patch", "/api/sessions", {"GET", "HEAD", "OPTIONS", "POST"}),
        ("post", f"/api/sessions/{SID}", {"GET", "HEAD", "OPTIONS", "PATCH", "DELETE"}),
        ("put", f"/api/sessions/{SID}", {"GET", "HEAD", "OPTIONS", "PATCH", "DELETE"}),
        ("get", f"/api/sessions/{SID}/message", {"OPTIONS", "POST"}),
        ("delete", f"/api/sessions/{SID}/messages", {"GET", "HEAD", "OPTIONS", "POST"}),
        ("post", "/health", {"GET", "HEAD", "OPTIONS"}),
    ],
)
def test_wrong_method_is_405_with_allow(client, method, path, allow):
    response = getattr(client, method)(path)
    assert_problem(response, problem(405, "The method is not allowed for the requested URL."))
    assert {m.strip() for m in response.headers["Allow"].split(",")} == allow


FIELD_CASES = [
    ("post", "/api/sessions", {"agent_id": "a\x00"}, "agent_id"),
    ("post", "/api/sessions", {"agent_id": "a\ud800"}, "agent_id"),
    ("post", "/api/sessions", {"agent_id": "a", "task_id": "\udc00"}, "task_id"),
    ("post", "/api/sessions", {"agent_id": "a", "prompt": "\x00"}, "prompt"),
    ("patch", "/api/sessions/{id}", {"prompt": "x\ud83d"}, "prompt"),
    ("post", "/api/sessions/{id}/message", {"content": "\x00"}, "content"),
    ("post", "/api/sessions/{id}/messages", {"content": "hi \udfff"}, "content"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), FIELD_CASES)
def test_nul_and_lone_surrogates_in_fields_are_422(api, client, session, method, path, body, field):
    before = snapshot(api)
    response = call(
        client, method, path, session, data=json.dumps(body), content_type="application/json"
    )
    assert_problem(response, invalid(**{field: [BAD_TEXT]}))
    assert snapshot(api) == before


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"k": "\x00"}, "At /k"),
        ({"k": ["ok", "\ud800"]}, "At /k/1"),
        ({"k": {"j": "x\x00y"}}, "At /k/j"),
        ({"\x00": 1}, "A key in /"),
        ({"k": {"\udbff": 1}}, "A key in /k"),
        ({"k": [{"\x00": None}]}, "A key in /k/0"),
    ],
)
@pytest.mark.parametrize("method", ["post", "patch"])
def test_nul_and_lone_surrogates_in_data_are_422(api, client, session, data, where, method):
    before = snapshot(api)
    path = "/api/sessions" if method == "post" else "/api/sessions/{id}"
    body = {"agent_id": "x", "data": data} if method == "post" else {"data": data}
    response = call(
        client, method, path, session, data=json.dumps(body), content_type="application/json"
    )
    assert_problem(response, invalid(data=[f"{where}: {BAD_TEXT}"]))
    assert snapshot(api) == before


@pytest.mark.parametrize(
    "query",
    [
        "agent_id=a%00",
        "task_id=%00",
        "cursor=session-%00",
        "agent_id=a%ED%A0%80",
        "task_id=%ED%B0%80",
        "agent_id=%FF",
        "task_id=%C3",
    ],
)
def test_nul_and_bad_text_in_query_parameters_are_422(api, client, query):
    api.create()
    name = query.split("=")[0]
    assert_problem(client.get(f"/api/sessions?{query}"), invalid(**{name: [BAD_TEXT]}))


@pytest.mark.parametrize("query", [b"agent_id=\xff", b"\xff=1", b"task_id=\xed\xa0\x80"])
def test_raw_bytes_that_are_not_utf8_in_the_query_are_400(api, client, query):
    api.create()
    environ = {"QUERY_STRING": query.decode("latin-1")}
    response = client.get("/api/sessions", environ_overrides=environ)
    assert_problem(response, problem(400, "The query string is not valid UTF-8."))


def test_problem_bodies_never_show_internals(api, client):
    session = api.create()
    responses = [
        client.get("/api/sessions/" + "x" * 5000),
        client.get(f"/api/sessions/{session['id']}/messages?cursor=1%27%3B%20DROP%20TABLE"),
        client.get("/api/sessions?agent_id=%27%20OR%201%3D1%20--"),
        client.post(
            "/api/sessions",
            data=b'{"agent_id": "x", "data": {"a": [' * 3,
            content_type="application/json",
        ),
        client.patch(f"/api/sessions/{session['id']}", json={"status": "x' OR 1=1"}),
    ]
    for response in responses:
        assert response.status_code < 500
        assert response.mimetype in ("application/json", "application/problem+json")
        if response.status_code >= 400:
            assert_no_leak(response)


def test_database_unreachable_is_503_with_retry_after(unreachable_client):
    for response in (
        unreachable_client.get("/api/sessions"),
        unreachable_client.post("/api/sessions", json={"agent_id": "x"}),
    ):
        assert_unavailable(response)
