"""Prepared queries: generated once per database and shape, same rows as peewee's."""

import pytest

from sessions_app.db import database
from sessions_app.models import Session
from sessions_app.prepared import Prepared


@pytest.fixture
def built(app):
    calls = []

    def build(agent_id=None, status=None, limit=None):
        calls.append((agent_id, status, limit))
        query = Session.select(Session.id, Session.status).order_by(Session.id)
        if agent_id is not None:
            query = query.where(Session.agent_id == agent_id)
        if status is not None:
            query = query.where((Session.status == status) | (Session.status == "never"))
        return query.limit(limit)

    return Prepared(build), calls


def test_rows_are_the_querys_rows_and_sql_is_generated_once_per_shape(api, built):
    prepared, calls = built
    a = api.create(agent_id="a")
    api.create(agent_id="b")
    with database.connection_context():
        assert prepared.rows(agent_id="a", limit=10) == [{"id": a["id"], "status": "created"}]
        assert prepared.rows(agent_id="b", limit=0) == []
        assert len(prepared.rows(limit=10)) == 2
        assert prepared.rows(agent_id="a", status="created", limit=10)[0]["id"] == a["id"]
        assert prepared.rows(agent_id="a", status="active", limit=10) == []
    assert len(calls) == 3  # (agent_id, limit), (limit), (agent_id, status, limit)


def test_convert_turns_stored_values_into_python(api, app):
    session = api.create(data={"k": [1, 2]})
    prepared = Prepared(
        lambda session_id: Session.select(Session.data).where(Session.id == session_id),
        convert={"data": Session.data.python_value},
    )
    with database.connection_context():
        assert prepared.rows(session_id=session["id"]) == [{"data": {"k": [1, 2]}}]


def test_a_value_that_is_not_a_parameter_is_refused(app):
    prepared = Prepared(lambda limit: Session.select().limit(5))
    with database.connection_context(), pytest.raises(ValueError, match="limit"):
        prepared.rows(limit=3)
