def test_create_then_get(api):
    created = api.create(task_id="task-xyz", prompt="Start", data={"workdir": "/w"})
    assert api.get(created["id"]) == created


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
