"""Lists that follow ``next_cursor`` lazily: iterate for every item, or take one page."""


class Pager:
    """The items of a paged list, fetched a page at a time as they are consumed.

    ``for item in pager`` follows ``next_cursor`` until it is null;
    ``pager.page(cursor)`` fetches one page (``Page``), ``pager.pages()``
    yields the pages.  Nothing is fetched until then.
    """

    def __init__(self, fetch, cursor=None):
        self._fetch = fetch
        self._cursor = cursor

    def page(self, cursor=None):
        """Return one page: the first (or the one at ``cursor``)."""
        return self._fetch(cursor if cursor is not None else self._cursor)

    def pages(self):
        """Yield each page in turn, up to the last."""
        cursor = self._cursor
        while True:
            page = self._fetch(cursor)
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def __iter__(self):
        for page in self.pages():
            yield from page.items
