"""Whatever a client sends, the answer is never a 5xx (hypothesis-generated input)."""

import json
from urllib.parse import quote_from_bytes, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessions_app.ids import SESSION_ID_PATTERN

fuzz = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

SESSION_FIELDS = ("agent_id", "task_id", "prompt", "data", "status")
MESSAGE_FIELDS = ("content", "role")
LIST_PARAMS = ("agent_id", "task_id", "status", "limit", "cursor")
JSON = "application/json"

text = st.text(max_size=40)
numbers = (
    st.integers(min_value=-(2**130), max_value=2**130)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, -0.0, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 5e-324])
    | st.sampled_from([1e16, 1e19, -1e19, 1e300, 1.7976931348623157e308, 2.5e-7])
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=20,
)


def objects_with(fields):
    """Objects mixing the endpoint's own fields, of any type, with arbitrary keys."""
    known = st.dictionaries(st.sampled_from(fields), json_values | text, max_size=len(fields))
    return st.builds(lambda a, b: {**b, **a}, known, st.dictionaries(text, json_values, max_size=2))


data = st.dictionaries(text, json_values, max_size=5)
optional_text = st.none() | text
# Well-formed bodies whose values are anything the schemas might let through:
# what is stored must also read back (GET, lists) without a 5xx.
storable_creates = st.fixed_dictionaries(
    {"agent_id": st.text(min_size=1, max_size=20)},
    optional={"task_id": optional_text, "prompt": optional_text, "data": data},
)
storable_patches = st.fixed_dictionaries(
    {},
    optional={
        "data": data,
        "prompt": optional_text,
        "status": st.sampled_from(["created", "active", "paused", "completed", "failed"]),
    },
)
storable_messages = st.fixed_dictionaries(
    {"content": text}, optional={"role": st.sampled_from(["user", "assistant", "system"])}
)


def nested(depth):
    value = {}
    for _ in range(depth):
        value = {"k": value}
    return value


def encoded(value):
    """Encode with the standard library, which (unlike orjson) writes any integer."""
    return json.dumps(value).encode()


odd_documents = st.sampled_from(
    [
        b"",
        b"null",
        b"NaN",
        b'{"agent_id": "a", "data": {"x": NaN}}',
        b'{"agent_id": "a", "data": {"x": 1e400}}',
        b'{"agent_id": "a", "data": {"x": -1e400, "y": 1e-400}}',
        b'{"agent_id": "a", "data": {"n": 123456789012345678901234567890}}',
        b'{"agent_id": "a", "agent_id": "b"}',
        b'{"content": "\\ud800", "agent_id": "\\udfff"}',
        b'{"agent_id": "a\\u0000"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
        b"\xef\xbb\xbf{}",
        b"\xff\xfe{\x00}\x00",
    ]
)
bodies = (
    json_values.map(encoded)
    | objects_with(SESSION_FIELDS).map(encoded)
    | objects_with(MESSAGE_FIELDS).map(encoded)
    | st.integers(0, 150).map(lambda depth: encoded({"agent_id": "a", "data": nested(depth)}))
    | st.integers(0, 150).map(lambda depth: encoded({"data": nested(depth)}))
    | st.binary(max_size=64)
    | odd_documents
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=latin-1",
        "application/merge-patch+json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "",
    ]
) | st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), max_size=30)

query_strings = (
    st.dictionaries(st.sampled_from(LIST_PARAMS) | text, text, max_size=4).map(urlencode)
    | st.lists(st.tuples(st.sampled_from(LIST_PARAMS), text), max_size=4).map(urlencode)
    | st.binary(max_size=40).map(quote_from_bytes)
    # Raw bytes, as a server hands them over in a WSGI environ.
    | st.binary(max_size=40).map(lambda raw: raw.decode("latin-1"))
    | st.sampled_from(
        [
            "limit=1e3",
            "limit=-1",
            "limit=99999999999999999999",
            "limit=%EF%BC%91",
            "cursor=0",
            "cursor=-1",
            "cursor=2147483648",
            "cursor=session-zzzzzzzzzzzzzzzzzzzzzzzzzzzz",
            "status=,",
            "status=active,,paused",
            "status=active&status=paused",
            "agent_id=%00",
            "agent_id=%ED%A0%80",
            "task_id=" + "x" * 300,
        ]
    )
)


@pytest.fixture
def session_id(api):
    return api.create()["id"]


def get(client, path, query):
    """GET ``path`` with ``query`` as the raw query string, exactly as given."""
    return client.get(path, environ_overrides={"QUERY_STRING": query})


def assert_not_server_error(response):
    assert response.status_code < 500, response.get_data(as_text=True)


def assert_reads_back(client, session_id):
    for path in (f"/api/sessions/{session_id}", f"/api/sessions/{session_id}/messages"):
        assert_not_server_error(client.get(path))
    assert_not_server_error(client.get("/api/sessions", query_string={"limit": 3}))


@fuzz
@given(body=bodies, content_type=content_types)
def test_create_session_never_fails(client, body, content_type):
    response = client.post("/api/sessions", data=body, content_type=content_type)
    assert_not_server_error(response)


@fuzz
@given(body=storable_creates)
def test_stored_session_reads_back(client, body):
    response = client.post("/api/sessions", data=encoded(body), content_type=JSON)
    assert_not_server_error(response)
    if response.status_code == 201:
        assert_reads_back(client, response.get_json()["id"])


@fuzz
@given(body=storable_patches)
def test_patched_session_reads_back(client, session_id, body):
    response = client.patch(f"/api/sessions/{session_id}", data=encoded(body), content_type=JSON)
    assert_not_server_error(response)
    assert_reads_back(client, session_id)


@fuzz
@given(body=storable_messages)
def test_stored_message_reads_back(client, session_id, body):
    path = f"/api/sessions/{session_id}/message"
    assert_not_server_error(client.post(path, data=encoded(body), content_type=JSON))
    assert_reads_back(client, session_id)


@fuzz
@given(body=bodies, content_type=content_types, missing=st.booleans())
def test_patch_session_never_fails(client, session_id, body, content_type, missing):
    target = "session-" + "0" * 28 if missing else session_id
    response = client.patch(f"/api/sessions/{target}", data=body, content_type=content_type)
    assert_not_server_error(response)


@fuzz
@given(body=bodies, content_type=content_types, path=st.sampled_from(["message", "messages"]))
def test_send_message_never_fails(client, session_id, body, content_type, path):
    response = client.post(
        f"/api/sessions/{session_id}/{path}", data=body, content_type=content_type
    )
    assert_not_server_error(response)


@fuzz
@given(query=query_strings)
def test_session_list_query_never_fails(client, query):
    assert_not_server_error(get(client, "/api/sessions", query))


@fuzz
@given(query=query_strings)
def test_message_list_query_never_fails(client, session_id, query):
    response = get(client, f"/api/sessions/{session_id}/messages", query)
    assert_not_server_error(response)


@fuzz
@given(session=st.from_regex(f"^{SESSION_ID_PATTERN}$"), query=query_strings)
def test_unknown_session_never_fails(client, session, query):
    for response in (
        get(client, f"/api/sessions/{session}", query),
        get(client, f"/api/sessions/{session}/messages", query),
        client.delete(f"/api/sessions/{session}", environ_overrides={"QUERY_STRING": query}),
    ):
        assert_not_server_error(response)
