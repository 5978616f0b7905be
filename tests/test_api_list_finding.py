"""GET /api/sessions, section 8: time windows, sort and order, cursors, status_changed_at."""

from datetime import datetime, timedelta

import pytest
from problems import assert_problem, invalid

SORTS = [(sort, order) for sort in ("created_at", "last_active") for order in ("desc", "asc")]
BAD_TIME = "Must be an RFC 3339 date-time with Z or an offset, such as 2024-01-16T10:00:00Z."
PLUS = "A '+' in a query string reads as a space: send the offset's '+' as %2B."
NOT_ISSUED = "Not a cursor this service issued."


def ids(page):
    return [s["id"] for s in page["sessions"]]


def read_all(api, limit=2, **params):
    """Follow next_cursor to the end; return every id in the order listed."""
    found, cursor = [], None
    while True:
        page = api.list(limit=limit, **params, **({"cursor": cursor} if cursor else {}))
        found += ids(page)
        cursor = page["next_cursor"]
        if cursor is None:
            return found


def instant(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def shifted(text, **delta):
    """The instant ``text`` moved by ``delta``, written with microseconds and Z."""
    moved = instant(text) + timedelta(**delta)
    return moved.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def in_offset(text, hours, minutes=0):
    """The same instant written in another offset, e.g. +05:30."""
    offset = timedelta(hours=hours, minutes=minutes)
    moved = instant(text) + offset
    sign = "+" if offset >= timedelta(0) else "-"
    off = abs(offset)
    return (
        moved.strftime("%Y-%m-%dT%H:%M:%S.%f")
        + f"{sign}{off.seconds // 3600:02d}:{off.seconds % 3600 // 60:02d}"
    )


@pytest.fixture
def fleet(api):
    """Six sessions, created in order, then active in another order (messages and PATCHes)."""
    sessions = [api.create(agent_id="a" if n % 2 else "b", task_id="t") for n in range(6)]
    for n in (3, 0, 4):
        api.send(sessions[n]["id"])
    api.patch(sessions[1]["id"], status="paused")
    api.patch(sessions[5]["id"], data={"k": "v"})
    return [api.get(s["id"]) for s in sessions]


def ordered(sessions, sort, order):
    key = (lambda s: s["id"]) if sort == "created_at" else (lambda s: (s["last_active"], s["id"]))
    return [s["id"] for s in sorted(sessions, key=key, reverse=order == "desc")]


@pytest.mark.parametrize(("sort", "order"), SORTS)
@pytest.mark.parametrize("limit", [1, 2, 5, 100])
def test_every_sort_and_order_lists_each_session_once_in_its_order(api, fleet, sort, order, limit):
    assert read_all(api, limit, sort=sort, order=order) == ordered(fleet, sort, order)


def test_the_default_is_newest_created_first(api, fleet):
    assert ids(api.list()) == ordered(fleet, "created_at", "desc")
    assert ids(api.list()) == ids(api.list(sort="created_at", order="desc"))


def test_last_active_order_differs_from_creation_order(api, fleet):
    by_activity = ids(api.list(sort="last_active"))
    assert by_activity[:4] == [fleet[n]["id"] for n in (5, 1, 4, 0)]
    assert by_activity != ids(api.list())


@pytest.mark.parametrize(("sort", "order"), SORTS)
def test_filters_combine_with_every_sort_and_order(api, fleet, sort, order):
    for params, match in [
        ({"agent_id": "a"}, lambda s: s["agent_id"] == "a"),
        ({"status": "active"}, lambda s: s["status"] == "active"),
        ({"status": "active,paused"}, lambda s: s["status"] in ("active", "paused")),
        ({"agent_id": "b", "status": "created,active"}, lambda s: s["agent_id"] == "b"),
        ({"task_id": "t", "agent_id": "a"}, lambda s: s["agent_id"] == "a"),
    ]:
        wanted = [s for s in fleet if match(s)]
        if "status" in params:
            wanted = [s for s in wanted if s["status"] in params["status"].split(",")]
        assert read_all(api, 2, sort=sort, order=order, **params) == ordered(wanted, sort, order)


# -- time windows ------------------------------------------------------------------


@pytest.mark.parametrize("column", ["created_at", "last_active"])
def test_after_is_exclusive_and_before_inclusive(api, fleet, column):
    prefix = "created" if column == "created_at" else "active"
    by_time = sorted(fleet, key=lambda s: (s[column], s["id"]))
    pivot = by_time[2][column]
    after = api.list(**{f"{prefix}_after": pivot, "sort": column, "order": "asc"})
    assert ids(after) == [s["id"] for s in by_time if s[column] > pivot]
    before = api.list(**{f"{prefix}_before": pivot, "sort": column, "order": "asc"})
    assert ids(before) == [s["id"] for s in by_time if s[column] <= pivot]
    assert by_time[2]["id"] in ids(before) and by_time[2]["id"] not in ids(after)


@pytest.mark.parametrize("column", ["created_at", "last_active"])
def test_windows_compare_to_the_microsecond_in_any_offset(api, fleet, column):
    prefix = "created" if column == "created_at" else "active"
    pivot = sorted(fleet, key=lambda s: s[column])[3][column]
    expected_after = {s["id"] for s in fleet if s[column] > pivot}
    for text in (
        pivot,
        pivot.replace("T", "t").replace("Z", "z"),
        in_offset(pivot, 5, 30),
        in_offset(pivot, -10),
        pivot.replace("Z", "999Z"),  # finer than a microsecond: the same microsecond
    ):
        assert set(ids(api.list(**{f"{prefix}_after": text}))) == expected_after, text
    one_less = shifted(pivot, microseconds=-1)
    assert set(ids(api.list(**{f"{prefix}_after": one_less}))) == expected_after | {
        s["id"] for s in fleet if s[column] == pivot
    }


@pytest.mark.parametrize(("sort", "order"), SORTS)
def test_a_window_pages_in_every_sort_and_order(api, fleet, sort, order):
    low = sorted(s["created_at"] for s in fleet)[0]
    high = sorted(s["last_active"] for s in fleet)[-2]
    params = {"created_after": low, "active_before": high, "sort": sort, "order": order}
    wanted = [s for s in fleet if s["created_at"] > low and s["last_active"] <= high]
    assert len(wanted) >= 3
    assert read_all(api, 1, **params) == ordered(wanted, sort, order)


@pytest.mark.parametrize(
    "params",
    [
        {"created_after": "2100-01-01T00:00:00Z"},
        {"created_before": "2000-01-01T00:00:00Z"},
        {"active_after": "2100-01-01T00:00:00Z", "sort": "last_active"},
        {"created_after": "2024-01-02T00:00:00Z", "created_before": "2024-01-01T00:00:00Z"},
        {"active_after": "9999-12-31T23:59:59.999999Z"},
        {"created_before": "0001-01-01T00:00:00Z"},
    ],
)
def test_a_window_with_nothing_in_it_is_an_empty_list(api, fleet, params):
    assert api.list(**params) == {"sessions": [], "next_cursor": None}


def test_wide_windows_hold_everything(api, fleet):
    params = {"created_after": "0001-01-01T00:00:00Z", "active_before": "9999-12-31T23:59:59Z"}
    assert ids(api.list(**params)) == ordered(fleet, "created_at", "desc")


def test_active_but_quiet_for_a_while(api, fleet):
    quiet_since = max(s["last_active"] for s in fleet if s["status"] == "active")
    api.send(fleet[0]["id"])  # active again: no longer quiet
    found = ids(api.list(status="active", active_before=quiet_since, sort="last_active"))
    expected = [fleet[n]["id"] for n in (4, 3)]
    assert found == expected


@pytest.mark.parametrize(
    "name", ["created_after", "created_before", "active_after", "active_before"]
)
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yesterday", BAD_TIME),
        ("", BAD_TIME),
        ("2024-01-16", BAD_TIME),
        ("2024-01-16T10:00:00", BAD_TIME),
        ("2024-01-16T10:00Z", BAD_TIME),
        ("1705399200", BAD_TIME),
        ("2024-01-16%2010:00:00Z", BAD_TIME),
        ("2024-01-16T10:00:00+01:00", PLUS),  # an unescaped "+" arrives as a space
        ("2024-02-30T00:00:00Z", "Not a date-time that exists: day is out of range for month."),
        ("2024-01-16T24:00:00Z", "Not a date-time that exists: the time of day is out of range."),
        ("2024-01-16T10:00:00%2B24:00", "Not a date-time that exists: the offset is out of range."),
        ("0000-01-01T00:00:00Z", "Not a date-time that exists: year 0 is out of range."),
    ],
)
def test_a_bad_timestamp_is_a_422(api, client, name, value, message):
    for path in ("/api/sessions", "/api/sessions/count"):
        assert_problem(client.get(f"{path}?{name}={value}"), invalid(**{name: [message]}))


@pytest.mark.parametrize(
    ("query", "errors"),
    [
        ("sort=id", {"sort": ["Must be one of: created_at, last_active."]}),
        ("sort=created", {"sort": ["Must be one of: created_at, last_active."]}),
        ("sort=", {"sort": ["Must be one of: created_at, last_active."]}),
        ("order=DESC", {"order": ["Must be one of: desc, asc."]}),
        ("order=newest", {"order": ["Must be one of: desc, asc."]}),
        ("sort=last_active&sort=created_at", {"sort": ["Given more than once."]}),
    ],
)
def test_a_bad_sort_or_order_is_a_422(api, client, query, errors):
    assert_problem(client.get(f"/api/sessions?{query}"), invalid(**errors))


# -- cursors -----------------------------------------------------------------------


@pytest.mark.parametrize(("sort", "order"), SORTS)
@pytest.mark.parametrize(("other_sort", "other_order"), SORTS)
def test_a_cursor_only_continues_its_own_sort_and_order(
    api, client, fleet, sort, order, other_sort, other_order
):
    cursor = api.list(limit=1, sort=other_sort, order=other_order)["next_cursor"]
    response = client.get(
        "/api/sessions", query_string={"cursor": cursor, "sort": sort, "order": order, "limit": 1}
    )
    if (sort, order) == (other_sort, other_order):
        assert response.status_code == 200
        return
    message = f"This cursor continues a list with sort={other_sort}&order={other_order}."
    assert_problem(response, invalid(cursor=[message]))


@pytest.mark.parametrize(("sort", "order"), SORTS)
def test_a_forged_cursor_is_a_422(api, client, fleet, sort, order):
    cursor = api.list(limit=1, sort=sort, order=order)["next_cursor"]
    for forged in (cursor[:-1], cursor + "A", cursor[:5] + "x" + cursor[6:], "bm9wZQ", "a" * 80):
        if forged == cursor:
            continue
        response = client.get(
            "/api/sessions", query_string={"cursor": forged, "sort": sort, "order": order}
        )
        assert_problem(response, invalid(cursor=[NOT_ISSUED]))


def test_a_cursor_stays_valid_with_other_filters(api, fleet):
    cursor = api.list(limit=2, sort="last_active")["next_cursor"]
    rest = api.list(cursor=cursor, sort="last_active", agent_id="a")
    listed = ids(api.list(sort="last_active"))
    assert ids(rest) == [i for i in listed[2:] if i in {s["id"] for s in fleet[1::2]}]


def test_a_session_id_cursor_of_earlier_versions_still_works(api, fleet):
    newest_first = ordered(fleet, "created_at", "desc")
    assert ids(api.list(cursor=newest_first[1])) == newest_first[2:]


def test_the_cursor_of_a_deleted_session_still_continues(api, fleet):
    first = api.list(limit=2, sort="last_active", order="asc")
    for session_id in ids(first):
        api.delete(session_id)
    rest = read_all(api, 2, sort="last_active", order="asc")
    follow = ids(api.list(cursor=first["next_cursor"], sort="last_active", order="asc"))
    assert follow == rest[: len(follow)]


# -- status_changed_at -------------------------------------------------------------


def test_status_changed_at_is_created_at_until_the_status_changes(api):
    session = api.create()
    assert session["status_changed_at"] == session["created_at"]
    api.patch(session["id"], data={"k": "v"}, prompt="p")
    assert api.get(session["id"])["status_changed_at"] == session["created_at"]


def test_the_first_message_stamps_the_move_to_active(api):
    session = api.create()
    receipt = api.send(session["id"])
    after = api.get(session["id"])
    assert after["status"] == "active"
    assert after["status_changed_at"] == receipt["timestamp"] == after["last_active"]
    api.send(session["id"])
    assert api.get(session["id"])["status_changed_at"] == receipt["timestamp"]


def test_a_patch_of_the_status_stamps_it_and_a_paused_session_keeps_it(api):
    session = api.create()
    paused = api.patch(session["id"], status="paused")
    assert paused["status_changed_at"] == paused["last_active"] > session["created_at"]
    api.send(session["id"])  # a paused session takes messages and stays paused
    after = api.get(session["id"])
    assert after["status"] == "paused"
    assert after["status_changed_at"] == paused["status_changed_at"]
    assert after["last_active"] > paused["last_active"]
    same = api.patch(session["id"], status="paused")
    assert same["status_changed_at"] == paused["status_changed_at"]
    done = api.patch(session["id"], status="completed")
    assert done["status_changed_at"] == done["last_active"]


def test_summaries_carry_status_changed_at(api, fleet):
    for summary in api.list()["sessions"]:
        assert summary["status_changed_at"] == api.get(summary["id"])["status_changed_at"]
