"""DELETE /api/sessions/<id>: 204, then the session and its messages are gone."""

from problems import assert_problem, invalid, problem

from sessions_app import db
from sessions_app.models import Message, Session


def stored_messages(session_id):
    with db.database.connection_context():
        return Message.select().where(Message.session == session_id).count()


def test_delete_is_204_with_an_empty_body(api, client):
    session_id = api.create()["id"]
    response = client.delete(f"/api/sessions/{session_id}")
    assert response.status_code == 204
    assert response.get_data() == b""


def test_deleted_session_is_gone_with_its_messages(api, client):
    session_id = api.create()["id"]
    for _ in range(3):
        api.send(session_id)
    assert stored_messages(session_id) == 3
    api.delete(session_id)
    gone = problem(404, f"No session has the id '{session_id}'.")
    assert_problem(client.get(f"/api/sessions/{session_id}"), gone)
    assert_problem(client.get(f"/api/sessions/{session_id}/messages"), gone)
    assert_problem(client.delete(f"/api/sessions/{session_id}"), gone)
    assert_problem(client.post(f"/api/sessions/{session_id}/message", json={"content": "x"}), gone)
    assert_problem(client.patch(f"/api/sessions/{session_id}", json={}), gone)
    assert stored_messages(session_id) == 0
    assert api.list()["sessions"] == []


def test_delete_leaves_other_sessions_alone(api):
    kept, deleted = api.create(), api.create()
    api.send(kept["id"])
    api.send(deleted["id"])
    api.delete(deleted["id"])
    assert [s["id"] for s in api.list()["sessions"]] == [kept["id"]]
    assert stored_messages(kept["id"]) == 1
    assert api.get(kept["id"])["message_count"] == 1


def test_unknown_session_is_404(client):
    unknown = "session-0000000000000000000000000000"
    assert_problem(
        client.delete(f"/api/sessions/{unknown}"),
        problem(404, f"No session has the id '{unknown}'."),
    )


def test_unknown_query_parameter_is_422_and_deletes_nothing(api, client):
    session_id = api.create()["id"]
    assert_problem(
        client.delete(f"/api/sessions/{session_id}?force=1"), invalid(force=["Unknown field."])
    )
    api.get(session_id)
    with db.database.connection_context():
        assert Session.select().count() == 1
