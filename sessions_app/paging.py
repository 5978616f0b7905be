"""Keyset paging: pages cut from ``limit + 1`` rows read after a cursor."""


def cut_page(rows, limit, cursor_of):
    """Return ``(items, next_cursor)`` from up to ``limit + 1`` rows.

    The extra row only tells that another page follows; the cursor is the key
    of the last item returned, so the next page starts right after it.
    """
    if len(rows) <= limit:
        return rows, None
    items = rows[:limit]
    return items, cursor_of(items[-1])
