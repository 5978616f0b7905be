"""paging.cut_page: a page of ``limit`` items and the cursor after it."""

import pytest

from sessions_app.paging import cut_page


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
