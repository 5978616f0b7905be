"""GET /health: 200 when the database answers, else a 503 problem with Retry-After."""

from problems import assert_unavailable


def test_health_is_ok(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == {"status": "ok"}


def test_health_is_503_when_the_database_cannot_be_reached(unreachable_client):
    assert_unavailable(unreachable_client.get("/health"))
