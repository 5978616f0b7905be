"""Prepared queries: generated once per database and shape, same rows as peewee's."""

import pytest
from peewee import (
    BigIntegerField,
    BooleanField,
    CharField,
    DateTimeField,
    ForeignKeyField,
    Model,
    fn,
)

from sessions_app.db import database
from sessions_app.models import Message, Session
from sessions_app.prepared import Prepared, _converters


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


def test_each_column_is_turned_into_python_by_its_field(api, app):
    session = api.create(data={"k": [1, 2]})
    prepared = Prepared(
        lambda session_id: Session.select(Session.id, Session.data, Session.message_count).where(
            Session.id == session_id
        )
    )
    with database.connection_context():
        assert prepared.rows(session_id=session["id"]) == [
            {"id": session["id"], "data": {"k": [1, 2]}, "message_count": 0}
        ]


class Other(Model):
    flag = BooleanField()
    at = DateTimeField()
    name = CharField()
    count = BigIntegerField()
    session = ForeignKeyField(Session)


@pytest.mark.parametrize(
    ("query", "converted"),
    [
        (Session.select(), {"data"}),
        (Session.select(Session.id, Session.status, Session.created_at), set()),
        (Message.select(Message.session.alias("session_id"), Message.seq), set()),
        (Other.select(), {"flag", "at"}),
        (Other.select(Other.flag.alias("on"), Other.count), {"on"}),
        (Session.select(fn.COUNT(Session.id).alias("n")), set()),
        (Session.update(message_count=1).returning(Session.data), {"data"}),
    ],
    ids=["session", "plain", "foreign-key", "boolean-date", "alias", "expression", "returning"],
)
def test_only_columns_whose_field_changes_the_value_are_converted(query, converted):
    assert set(_converters(query)) == converted


@pytest.mark.parametrize("value", [["a", "b"], ("a",), {"a"}, {"a": 1}])
def test_a_list_is_refused_with_a_clear_error(app, value):
    prepared = Prepared(lambda agent_id: Session.select().where(Session.agent_id == agent_id))
    with database.connection_context(), pytest.raises(TypeError) as raised:
        prepared.rows(agent_id=value)
    assert str(raised.value) == (
        f"agent_id: a prepared query takes one value per parameter, not a {type(value).__name__}"
    )


def test_a_value_that_is_not_a_parameter_is_refused(app):
    prepared = Prepared(lambda limit: Session.select().limit(5))
    with database.connection_context(), pytest.raises(ValueError, match="limit"):
        prepared.rows(limit=3)
