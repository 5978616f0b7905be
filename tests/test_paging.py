"""paging.cut_page: a page of ``limit`` items and the cursor after it."""

import base64
import re

import pytest

from sessions_app.paging import CursorError, cut_page, session_cursor, session_position


@pytest.mark.parametrize(
    ("rows", "limit", "items", "cursor"),
    [
        ([], 1, [], None),
        ([1], 1, [1], None),
        ([1, 2], 2, [1, 2], None),
        ([1, 2], 1, [1], "c1"),
        ([1, 2, 3], 2, [1, 2], "c2"),
        ([1, 2, 3, 4], 3, [1, 2, 3], "c3"),
        ([1], 100, [1], None),
    ],
)
def test_cut_page(rows, limit, items, cursor):
    assert cut_page(rows, limit, lambda row: f"c{row}") == (items, cursor)


def test_cursor_is_the_key_of_the_last_item_returned():
    seen = []
    cut_page([{"id": "a"}, {"id": "b"}, {"id": "c"}], 2, lambda row: seen.append(row) or row["id"])
    assert seen == [{"id": "b"}]


# -- session-list cursors ------------------------------------------------------------
ROW = {"id": "session-0sgqg6wcv85awmvhdbb2k57zax5g", "last_active": 1_796_018_346_449_418}
ORDERS = [(sort, order) for sort in ("created_at", "last_active") for order in ("desc", "asc")]


@pytest.mark.parametrize(("sort", "order"), ORDERS)
def test_a_cursor_gives_back_the_position_of_its_row(sort, order):
    cursor = session_cursor(sort, order, ROW)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor)
    assert ROW["id"] not in cursor, "opaque: the position is not spelled out"
    expected = (ROW["last_active"] if sort == "last_active" else None, ROW["id"])
    assert session_position(cursor, sort, order) == expected


@pytest.mark.parametrize(("sort", "order"), ORDERS)
@pytest.mark.parametrize(("other_sort", "other_order"), ORDERS)
def test_a_cursor_of_another_sort_or_order_is_refused(sort, order, other_sort, other_order):
    if (sort, order) == (other_sort, other_order):
        return
    cursor = session_cursor(other_sort, other_order, ROW)
    with pytest.raises(CursorError, match=f"sort={other_sort}&order={other_order}"):
        session_position(cursor, sort, order)


def test_a_bare_session_id_still_continues_the_default_order():
    assert session_position(ROW["id"], "created_at", "desc") == (None, ROW["id"])
    with pytest.raises(CursorError):
        session_position(ROW["id"], "created_at", "asc")


def forged():
    """Cursors the service could not have written: edited, cut, padded or made up."""
    good = session_cursor("last_active", "desc", ROW)
    raw = base64.urlsafe_b64decode(good + "=" * (-len(good) % 4))

    def encode(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    yield good[:-1]
    yield good + "A"
    yield good + "="
    yield good[:-1] + ("B" if good[-1] != "B" else "C")
    yield encode(raw.replace(b"ld:", b"cd:"))
    yield encode(raw.replace(b":17", b":27"))
    yield encode(raw[:-4])
    yield encode(b"ld:1:" + ROW["id"].encode())
    yield good + "=="
    yield good.lower()
    yield "bGQ6MTIzOnNlc3Npb24t"
    yield "%%%"
    yield "é"
    yield ""


@pytest.mark.parametrize("cursor", list(forged()))
def test_a_forged_cursor_is_refused(cursor):
    with pytest.raises(CursorError, match="Not a cursor this service issued."):
        session_position(cursor, "last_active", "desc")
