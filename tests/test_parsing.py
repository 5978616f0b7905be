"""Loading query strings: an empty one is loaded once per schema, never shared."""

from sessions_app.parsing import load_query
from sessions_app.schemas import message_list_query_schema, session_list_query_schema


def test_no_query_string_gives_each_schemas_defaults_in_a_fresh_dict(app):
    with app.test_request_context("/api/sessions"):
        first = load_query(session_list_query_schema)
        first["limit"] = 7
        assert load_query(session_list_query_schema) == session_list_query_schema.load({})
        assert load_query(message_list_query_schema) == message_list_query_schema.load({})


def test_a_query_string_is_loaded_as_given(app):
    with app.test_request_context("/api/sessions?limit=5"):
        assert load_query(session_list_query_schema) == {
            "limit": 5,
            "sort": "created_at",
            "order": "desc",
        }
