"""The API description: a valid OpenAPI 3.1 document covering every route."""

import itertools
import json
import re

import pytest
from flask import Blueprint
from hypothesis import given
from hypothesis import strategies as st
from marshmallow import ValidationError
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from sessions_app import create_app, db, openapi, schemas
from sessions_app.operations import describe


@pytest.fixture
def document(client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.get_json()


def test_document_is_valid_openapi_3_1(document):
    assert document["openapi"] == "3.1.0"
    validate(document, cls=OpenAPIV31SpecValidator)


def routes(app):
    """The app's (method, path) pairs, read from its URL map, in OpenAPI's form."""
    found = set()
    for rule in app.url_map.iter_rules():
        # Files, not operations: static files and the docs page's assets.
        if rule.endpoint == "static" or rule.rule.startswith("/api/docs/<"):
            continue
        path = rule.rule.replace("<session_id:session_id>", "{session_id}")
        assert "<" not in path, f"a path parameter this test does not know: {rule.rule}"
        found.update((method, path) for method in rule.methods - {"HEAD", "OPTIONS"})
    return found


def test_every_route_is_documented_and_nothing_else(app, document):
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
        if method != "parameters"
    }
    assert documented == routes(app)
    assert ("POST", "/api/sessions/{session_id}/messages") in documented  # a second path


def test_a_route_without_a_description_is_an_error(app):
    extra = Blueprint("extra", __name__)

    @extra.get("/api/sessions/<session_id:session_id>/summary")
    def summary(session_id):
        return {}

    @extra.post("/api/ping")
    @describe("Ping", "Answers.")
    def ping():
        return {}

    app.register_blueprint(extra)
    with pytest.raises(openapi.Undescribed) as raised:
        openapi.document(app)
    message = str(raised.value)
    assert "/api/sessions/<session_id:session_id>/summary (extra.summary)" in message
    assert "/api/ping" not in message


def test_two_paths_of_one_view_need_an_operation_id_each(app):
    twice = Blueprint("twice", __name__)

    @twice.post("/api/ping")
    @twice.post("/api/pings")
    @describe("Ping", "Answers.")
    def ping():
        return {}

    app.register_blueprint(twice)
    with pytest.raises(
        openapi.Undescribed, match="/api/ping.? and /api/ping.? share the view ping"
    ):
        openapi.document(app)


def test_a_second_path_of_a_view_is_the_same_operation_under_its_own_id(document):
    paths = document["paths"]
    first = paths["/api/sessions/{session_id}/message"]["post"]
    second = paths["/api/sessions/{session_id}/messages"]["post"]
    assert second["summary"] == "Send a message to a session (same as POST …/message)"
    assert second["description"] == (
        "The same operation as `POST /api/sessions/{session_id}/message`."
    )
    for key in ("parameters", "requestBody", "tags"):
        assert second[key] == first[key], key
    assert second["responses"].keys() == first["responses"].keys()


def test_the_document_is_built_once_per_process_and_per_token_rule(app, database_url):
    # Keyed on what it depends on: the routes' descriptions and whether tokens are asked for.
    again = create_app({"DATABASE_URL": database_url})
    secured = create_app({"DATABASE_URL": database_url, "SESSIONS_API_TOKENS": "secret"})
    read_only = create_app({"DATABASE_URL": database_url, "SESSIONS_API_READONLY_TOKENS": "r"})
    db.database.close_all()
    assert again.extensions["openapi"] is app.extensions["openapi"]
    assert read_only.extensions["openapi"] is secured.extensions["openapi"]
    assert secured.extensions["openapi"] != app.extensions["openapi"]


def test_operations_have_unique_ids_summaries_and_problem_errors(document):
    ids = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            ids.append(operation["operationId"])
            assert operation["summary"] and operation["description"], (method, path)
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert response["$ref"].startswith("#/components/responses/")
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("post", "/api/sessions", {"201", "400", "409", "413", "415", "422", "503"}),
        ("get", "/api/sessions/{session_id}", {"200", "304", "400", "404", "422", "503"}),
        ("get", "/api/sessions", {"200", "400", "422", "503"}),
        (
            "patch",
            "/api/sessions/{session_id}",
            {"200", "400", "404", "409", "412", "413", "415", "422", "503"},
        ),
        ("delete", "/api/sessions/{session_id}", {"204", "400", "404", "412", "422", "503"}),
        (
            "post",
            "/api/sessions/{session_id}/message",
            {"201", "400", "404", "409", "413", "415", "422", "503"},
        ),
    ],
)
def test_operations_declare_the_statuses_they_answer(document, method, path, statuses):
    assert set(document["paths"][path][method]["responses"]) == statuses


def test_errors_carry_their_headers_and_422_names_fields(document):
    responses = document["components"]["responses"]
    assert "Allow" in responses["MethodNotAllowed"]["headers"]
    assert "Retry-After" in responses["ServiceUnavailable"]["headers"]
    schema = responses["UnprocessableContent"]["content"]["application/problem+json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/ValidationProblem"}
    assert "errors" in document["components"]["schemas"]["ValidationProblem"]["required"]
    created = document["paths"]["/api/sessions"]["post"]["responses"]["201"]
    assert created["headers"]["Location"]["required"] is True


def test_query_parameters_carry_bounds_and_choices(document):
    params = {
        p["name"]: p.get("schema") or p["content"]["application/json"]["schema"]
        for p in document["paths"]["/api/sessions"]["get"]["parameters"]
    }
    assert params["limit"] == {"type": "integer", "default": 100, "minimum": 1, "maximum": 1000}
    assert re.fullmatch(params["status"]["pattern"], "active,paused")
    assert not re.fullmatch(params["status"]["pattern"], "Active")
    assert params["data"]["type"] == "object"


def test_a_bulk_change_names_one_change_and_a_filter(document):
    bulk = document["components"]["schemas"]["BulkChange"]
    assert bulk["oneOf"] == [{"required": ["set"]}, {"required": ["delete"]}]
    assert bulk["required"] == ["filter"]
    assert document["components"]["schemas"]["BulkFilter"]["minProperties"] == 1
    assert bulk["properties"]["limit"]["maximum"] == 10_000
    result = document["components"]["schemas"]["BulkResult"]
    assert "by_status" not in result["required"]
    # Every answer carries its count of skipped sessions.
    assert document["components"]["schemas"]["BulkSkipped"]["required"] == ["conflict"]


def test_create_links_to_the_session_operations(document):
    links = document["paths"]["/api/sessions"]["post"]["responses"]["201"]["links"]
    targets = {link["operationId"] for link in links.values()}
    assert targets == {
        "get_session",
        "update_session",
        "delete_session",
        "send_message",
        "list_messages",
    }
    assert all(
        link["parameters"] == {"session_id": "$response.body#/id"} for link in links.values()
    )


def test_a_secured_service_documents_its_token(database_url):
    app = create_app({"DATABASE_URL": database_url, "SESSIONS_API_TOKENS": "secret"})
    try:
        response = app.test_client().get("/api/openapi.json")
    finally:
        db.database.close_all()
    assert response.status_code == 200  # open: a browser on /api/docs sends no token
    document = response.get_json()
    validate(document, cls=OpenAPIV31SpecValidator)
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    create = document["paths"]["/api/sessions"]["post"]
    assert create["security"] == [{"bearer": []}]
    assert {"401", "403"} <= set(create["responses"])
    forbidden = document["components"]["responses"]["Forbidden"]["description"]
    assert "may only read" in forbidden and "`agent_id` is not one of them" in forbidden
    assert "403" not in document["paths"]["/api/sessions"]["get"]["responses"]
    for open_path in ("/health", "/metrics", "/api/openapi.json", "/api/docs/"):
        assert "security" not in document["paths"][open_path]["get"], open_path
    secured = {
        (method, path)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
        if method != "parameters" and "security" in operation
    }
    assert secured == {
        (method, path)
        for path, methods in document["paths"].items()
        for method in methods
        if method != "parameters" and path.startswith(("/api/sessions", "/api/changes"))
    }


def test_the_document_names_each_operation_of_the_service(document):
    assert document["info"]["title"] == "Session API"
    assert document["info"]["version"] == "1.0.0"
    operations = {
        (method, path): operation["operationId"]
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
        if method != "parameters"
    }
    assert operations == {
        ("get", "/api/sessions"): "list_sessions",
        ("post", "/api/sessions"): "create_session",
        ("get", "/api/sessions/count"): "count_sessions",
        ("post", "/api/sessions/bulk"): "bulk_change",
        ("get", "/api/sessions/{session_id}"): "get_session",
        ("patch", "/api/sessions/{session_id}"): "update_session",
        ("delete", "/api/sessions/{session_id}"): "delete_session",
        ("post", "/api/sessions/{session_id}/message"): "send_message",
        ("post", "/api/sessions/{session_id}/messages"): "send_message_to_messages",
        ("get", "/api/sessions/{session_id}/messages"): "list_messages",
        ("get", "/api/changes"): "list_changes",
        ("get", "/health"): "health",
        ("get", "/metrics"): "metrics",
        ("get", "/api/openapi.json"): "openapi_document",
        ("get", "/api/docs/"): "api_docs",
    }


@pytest.mark.parametrize("path", ["/api/openapi.json", "/api/docs/"])
def test_unknown_query_parameters_are_422(client, path):
    response = client.get(path, query_string={"x": "1"})
    assert response.status_code == 422
    assert response.get_json()["errors"] == {"x": ["Unknown field."]}


def test_docs_page_loads_everything_from_the_service(client):
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/api/openapi.json" in html
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", html)
    assets = re.findall(r"(?:src|href)=\"(/api/docs/[^\"]+)\"", html)
    assert any(asset.endswith("swagger-ui-bundle.js") for asset in assets)
    for asset in assets:
        with client.get(asset) as response:
            assert response.status_code == 200, asset


@pytest.mark.parametrize(
    ("method", "path", "header"),
    [
        ("post", "/api/sessions", "Idempotency-Key"),
        ("post", "/api/sessions/{session_id}/message", "Idempotency-Key"),
        ("post", "/api/sessions/{session_id}/messages", "Idempotency-Key"),
        ("get", "/api/sessions/{session_id}", "If-None-Match"),
        ("patch", "/api/sessions/{session_id}", "If-Match"),
        ("delete", "/api/sessions/{session_id}", "If-Match"),
    ],
)
def test_the_headers_of_retries_and_versions_are_declared(document, method, path, header):
    parameters = document["components"]["parameters"]
    declared = [
        parameters[p["$ref"].rpartition("/")[2]]
        for p in document["paths"][path][method]["parameters"]
        if "$ref" in p
    ]
    assert [(p["name"], p["in"]) for p in declared] == [(header, "header")]
    assert not declared[0].get("required", False)


def test_header_patterns_accept_what_the_service_accepts(document):
    parameters = document["components"]["parameters"]
    key = parameters["IdempotencyKey"]["schema"]["pattern"]
    assert re.fullmatch(key, "order-42:retry/1") and not re.fullmatch(key, "a b")
    assert not re.fullmatch(key, "x" * 256)
    tags = parameters["IfMatch"]["schema"]["pattern"]
    for good in ("*", '"3"', 'W/"3", "4"', ' "1",,"2" '):
        assert re.fullmatch(tags, good), good
    for bad in ("", "3", '"3" "4"', '*, "3"'):
        assert not re.fullmatch(tags, bad), bad


def test_sessions_answer_with_their_tag_and_replays_say_so(document):
    paths = document["paths"]
    for method, path, status in [
        ("post", "/api/sessions", "201"),
        ("get", "/api/sessions/{session_id}", "200"),
        ("patch", "/api/sessions/{session_id}", "200"),
    ]:
        assert paths[path][method]["responses"][status]["headers"]["ETag"]["required"] is True
    for path in ("/api/sessions", "/api/sessions/{session_id}/message"):
        headers = paths[path]["post"]["responses"]["201"]["headers"]
        assert headers["Idempotent-Replayed"]["schema"] == {"type": "string", "enum": ["true"]}
    not_modified = document["components"]["responses"]["NotModified"]
    assert "content" not in not_modified and not_modified["headers"]["ETag"]["required"]
    assert "version" in document["components"]["schemas"]["Session"]["required"]
    assert "version" not in document["components"]["schemas"]["SessionSummary"]["properties"]


# -- what a typed client reads (openapi-python-client) ------------------------


def test_the_message_cursor_is_a_string_as_next_cursor_is(document):
    parameters = document["paths"]["/api/sessions/{session_id}/messages"]["get"]["parameters"]
    (cursor,) = [p for p in parameters if p.get("name") == "cursor"]
    assert cursor["schema"]["type"] == "string"
    next_cursor = document["components"]["schemas"]["MessageList"]["properties"]["next_cursor"]
    assert next_cursor["type"] == ["string", "null"]


def _message_cursor_accepted(value):
    try:
        schemas.message_list_query_schema.load({"cursor": value})
    except ValidationError:
        return False
    return True


@pytest.fixture(scope="module")
def message_cursor_pattern():
    document = json.loads(create_app({"DATABASE_URL": "sqlite:///:memory:"}).extensions["openapi"])
    parameters = document["paths"]["/api/sessions/{session_id}/messages"]["get"]["parameters"]
    (cursor,) = [p for p in parameters if p.get("name") == "cursor"]
    return re.compile(cursor["schema"]["pattern"])


@pytest.mark.parametrize(
    "value",
    [
        *("0", "7", "00", "42", "2147483646", "2147483647", "2147483648", "2147483650"),
        *("3000000000", "9999999999", "02147483647", "000000002147483647", "0" * 18, "0" * 19),
        *("0000000002147483647", "000000000000000001", "12345678901", "", "-1", "1.0"),
        *(" 1", "1 ", "1\n", "latest", "abc", "\u0661", "1e3", "+1"),
    ],
)
def test_the_message_cursor_pattern_is_what_the_service_accepts(message_cursor_pattern, value):
    matched = message_cursor_pattern.fullmatch(value) is not None
    assert matched == _message_cursor_accepted(value)


@given(st.from_regex(r"\A[0-9]{1,20}\Z") | st.integers(0, 2**32).map(str))
def test_the_message_cursor_pattern_agrees_with_the_parser(message_cursor_pattern, value):
    matched = message_cursor_pattern.fullmatch(value) is not None
    assert matched == _message_cursor_accepted(value)


@pytest.mark.parametrize("maximum", [0, 1, 7, 9, 10, 11, 20, 99, 100, 305, 1020])
def test_numerals_up_to_a_maximum(maximum):
    # Every numeral of up to one digit more than the pattern allows.
    for digits in (len(str(maximum)), len(str(maximum)) + 1):
        pattern = re.compile(openapi.numerals_up_to(maximum, digits))
        for length in range(1, digits + 2):
            for numeral in map("".join, itertools.product("0123456789", repeat=length)):
                expected = length <= digits and int(numeral) <= maximum
                assert (pattern.fullmatch(numeral) is not None) == expected, (digits, numeral)


def test_the_counts_by_status_are_all_required(document):
    schemas_ = document["components"]["schemas"]
    by_status = schemas_["SessionCount"]["properties"]["by_status"]
    assert by_status == {"$ref": "#/components/schemas/StatusCounts"}
    counts = schemas_["StatusCounts"]
    assert counts["required"] == ["created", "active", "paused", "completed", "failed"]
    assert set(counts["required"]) == set(counts["properties"])
    assert schemas_["SessionCount"]["required"] == ["count", "by_status"]
