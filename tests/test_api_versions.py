"""Contract section 6: version, ETag, If-None-Match (304), If-Match (412), malformed tags (400)."""

import pytest
from problems import assert_problem, invalid, problem

UNKNOWN = "session-0000000000000000000000000000"
MALFORMED = ["", '"1 "', "1", '"1', "W/1", '"1" "2"', ",", '*, "1"']


def stale(version):
    return problem(
        412,
        f'The session is at version {version} (ETag "{version}"), which If-Match does not '
        "name: read it again and retry.",
    )


def malformed(header):
    return problem(
        400,
        f"{header} must be * or a comma-separated list of quoted entity tags, "
        'such as "3" or W/"3".',
    )


def url(session_id):
    return f"/api/sessions/{session_id}"


# -- version and ETag ----------------------------------------------------------


def test_a_new_session_is_version_1_tagged_on_create_get_and_patch(api, client):
    created = client.post("/api/sessions", json={"agent_id": "a"})
    session = created.get_json()
    assert session["version"] == 1
    assert created.headers["ETag"] == '"1"'
    got = client.get(url(session["id"]))
    assert got.headers["ETag"] == '"1"'
    assert got.get_json()["version"] == 1
    patched = client.patch(url(session["id"]), json={"prompt": "p"})
    assert patched.headers["ETag"] == '"2"'
    assert patched.get_json()["version"] == 2


def test_every_change_raises_the_version_by_one_and_nothing_else_does(api):
    session_id = api.create()["id"]
    api.patch(session_id, data={"a": 1})
    assert api.get(session_id)["version"] == 2
    api.patch(session_id, data={"a": 1}, prompt=None, status="created")  # changes nothing
    api.patch(session_id)
    assert api.get(session_id)["version"] == 2
    api.send(session_id)  # a message: count, last_active and status move
    assert api.get(session_id)["version"] == 3
    api.patch(session_id, status="paused", prompt="both at once")
    assert api.get(session_id)["version"] == 4
    api.list()
    api.messages(session_id)
    assert api.get(session_id)["version"] == 4


def test_a_refused_change_leaves_the_version(api, client):
    session = api.patch(api.create()["id"], status="completed")
    assert client.patch(url(session["id"]), json={"status": "active"}).status_code == 409
    assert client.post(url(session["id"]) + "/message", json={"content": "x"}).status_code == 409
    assert api.get(session["id"])["version"] == session["version"] == 2


# -- If-None-Match -------------------------------------------------------------


@pytest.mark.parametrize("header", ['"1"', "*", 'W/"1"', '"7", W/"1"', ' "1" , "2" '])
def test_if_none_match_naming_the_current_tag_is_304_without_a_body(api, client, header):
    session_id = api.create()["id"]
    response = client.get(url(session_id), headers={"If-None-Match": header})
    assert response.status_code == 304
    assert response.headers["ETag"] == '"1"'
    assert response.get_data() == b""
    assert "Content-Type" not in response.headers


@pytest.mark.parametrize("header", ['"2"', 'W/"2"', '"01"'])
def test_if_none_match_naming_another_tag_gets_the_session(api, client, header):
    session = api.create()
    response = client.get(url(session["id"]), headers={"If-None-Match": header})
    assert response.status_code == 200
    assert response.get_json() == session
    assert response.headers["ETag"] == '"1"'


def test_if_none_match_follows_the_version(api, client):
    session_id = api.create()["id"]
    api.send(session_id)
    old = client.get(url(session_id), headers={"If-None-Match": '"1"'})
    assert old.status_code == 200 and old.headers["ETag"] == '"2"'
    assert client.get(url(session_id), headers={"If-None-Match": '"2"'}).status_code == 304


def test_if_none_match_on_an_unknown_session_is_404(client):
    response = client.get(url(UNKNOWN), headers={"If-None-Match": "*"})
    assert_problem(response, problem(404, f"No session has the id '{UNKNOWN}'."))


@pytest.mark.parametrize("header", MALFORMED)
def test_a_malformed_if_none_match_is_400(api, client, header):
    session_id = api.create()["id"]
    response = client.get(url(session_id), headers={"If-None-Match": header})
    assert_problem(response, malformed("If-None-Match"))


# -- If-Match on PATCH -----------------------------------------------------------


@pytest.mark.parametrize("header", ['"1"', "*", '"5", "1"'])
def test_patch_with_a_matching_if_match_is_applied(api, client, header):
    session_id = api.create()["id"]
    response = client.patch(url(session_id), json={"prompt": "p"}, headers={"If-Match": header})
    assert response.status_code == 200
    assert response.get_json()["prompt"] == "p"
    assert response.headers["ETag"] == '"2"'


@pytest.mark.parametrize("header", ['"2"', 'W/"1"', '"01"'])
def test_patch_with_a_stale_or_weak_if_match_is_412_and_changes_nothing(api, client, header):
    before = api.create()
    response = client.patch(
        url(before["id"]), json={"prompt": "p", "status": "active"}, headers={"If-Match": header}
    )
    assert_problem(response, stale(1))
    assert api.get(before["id"]) == before


def test_of_two_patches_with_the_same_if_match_only_the_first_is_applied(api, client):
    session_id = api.create()["id"]
    first = client.patch(
        url(session_id), json={"data": {"by": "first"}}, headers={"If-Match": '"1"'}
    )
    second = client.patch(
        url(session_id), json={"data": {"by": "second"}}, headers={"If-Match": '"1"'}
    )
    assert first.status_code == 200
    assert_problem(second, stale(2))
    assert api.get(session_id)["data"] == {"by": "first"}


def test_a_patch_that_changes_nothing_still_needs_a_matching_if_match(api, client):
    session_id = api.create()["id"]
    response = client.patch(url(session_id), json={}, headers={"If-Match": '"9"'})
    assert_problem(response, stale(1))
    response = client.patch(url(session_id), json={}, headers={"If-Match": '"1"'})
    assert response.status_code == 200 and response.headers["ETag"] == '"1"'


def test_a_message_makes_an_if_match_stale(api, client):
    session_id = api.create()["id"]
    api.send(session_id)
    response = client.patch(url(session_id), json={"prompt": "p"}, headers={"If-Match": '"1"'})
    assert_problem(response, stale(2))


@pytest.mark.parametrize("header", MALFORMED)
def test_a_malformed_if_match_on_patch_is_400(api, client, header):
    session_id = api.create()["id"]
    response = client.patch(url(session_id), json={"prompt": "p"}, headers={"If-Match": header})
    assert_problem(response, malformed("If-Match"))


# -- If-Match on DELETE ------------------------------------------------------------


@pytest.mark.parametrize("header", ['"2"', 'W/"1"'])
def test_delete_with_a_stale_if_match_is_412_and_keeps_the_session(api, client, header):
    before = api.create()
    api.send(before["id"])
    assert_problem(
        client.delete(url(before["id"]), headers={"If-Match": '"1"'}),
        stale(2),
    )
    assert api.get(before["id"])["message_count"] == 1


@pytest.mark.parametrize("header", ['"1"', "*"])
def test_delete_with_a_matching_if_match_deletes(api, client, header):
    session_id = api.create()["id"]
    response = client.delete(url(session_id), headers={"If-Match": header})
    assert response.status_code == 204
    api.get(session_id, expect=404)


@pytest.mark.parametrize("header", MALFORMED)
def test_a_malformed_if_match_on_delete_is_400(api, client, header):
    session_id = api.create()["id"]
    assert_problem(
        client.delete(url(session_id), headers={"If-Match": header}), malformed("If-Match")
    )
    api.get(session_id)


# -- the order of checks: malformed, unknown, precondition, status ---------------


@pytest.mark.parametrize("method", ["patch", "delete"])
def test_an_unknown_session_is_404_even_with_if_match_star(client, method):
    kwargs = {"json": {"prompt": "p"}} if method == "patch" else {}
    response = getattr(client, method)(url(UNKNOWN), headers={"If-Match": "*"}, **kwargs)
    assert_problem(response, problem(404, f"No session has the id '{UNKNOWN}'."))


def test_malformed_requests_come_before_unknown_sessions_and_preconditions(api, client):
    session_id = api.create()["id"]
    for target in (session_id, UNKNOWN):
        bad_tag = client.patch(url(target), json={"prompt": "p"}, headers={"If-Match": "1"})
        assert bad_tag.status_code == 400
        bad_body = client.patch(url(target), json={"colour": "red"}, headers={"If-Match": '"9"'})
        assert_problem(bad_body, invalid(colour=["Unknown field."]))
        not_json = client.patch(url(target), data="{", content_type="application/json")
        assert not_json.status_code == 400
        as_text = client.patch(url(target), data="{}", headers={"If-Match": '"9"'})
        assert as_text.status_code == 415
        bad_query = client.delete(url(target) + "?x=1", headers={"If-Match": '"9"'})
        assert bad_query.status_code == 422


def test_the_precondition_comes_before_the_status_rules(api, client):
    session = api.patch(api.create()["id"], status="completed")
    move = {"status": "active"}
    stale_move = client.patch(url(session["id"]), json=move, headers={"If-Match": '"1"'})
    assert_problem(stale_move, stale(2))
    current_move = client.patch(url(session["id"]), json=move, headers={"If-Match": '"2"'})
    assert_problem(
        current_move, problem(409, "The session is completed and cannot move to active.")
    )


def test_without_if_match_requests_behave_as_before(api, client):
    session_id = api.create()["id"]
    api.send(session_id)
    assert client.patch(url(session_id), json={"prompt": "p"}).status_code == 200
    assert client.delete(url(session_id)).status_code == 204
