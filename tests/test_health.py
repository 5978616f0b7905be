"""GET /health: 200 when the database answers, else a 503 problem with Retry-After."""

from problems import assert_problem, problem

from sessions_app import create_app, db


def test_health_is_ok(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == {"status": "ok"}


def test_health_is_503_when_the_database_cannot_be_reached(tmp_path):
    # A directory where the database file should be: SQLite cannot open it.
    app = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path}"})
    try:
        response = app.test_client().get("/health")
        assert_problem(
            response,
            problem(503, "The database cannot be reached right now; retry the request later."),
        )
        assert response.headers["Retry-After"] == "2"
    finally:
        db.database.close_all()
