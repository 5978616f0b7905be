"""The change feed: each write's change, recorded in its transaction, read back in seq order.

What it owns: the tables ``changes``, ``feed_marks`` and ``change_queue``
(``tables``), appending a write's change and the PostgreSQL publishing pass
(``recording``), reading pages and positions (``reading``), each worker's hub
and its watcher thread (``hub``), the one loop that follows the feed for a
waiting request (``follow``), the event stream (``stream``), the kinds of
change (``kinds``) and the feed's retention step (``prune``).

What it may import: the standard library, peewee, psycopg, marshmallow and
the service's storage helpers (``db``, ``deadlines``, ``prepared``,
``scoping``, ``storage_errors``, ``metrics``, ``jsonio``, ``fields``, ``timefmt``).
Never Flask and never a view: the views read the request (its headers, its
environ) and pass values in; ``init_app`` hands over the app's settings.
The rest of the app uses what this file exports (``feed.record(...)``,
``feed.page(...)``, ``feed.kinds``, ``feed.stream``), not the modules behind it.
"""

from ..db import database
from . import hub, kinds
from .follow import POLL, STREAM, Follower, committed, current_hub, read, wait_for_session
from .hub import client_gone, stop_waiting
from .prune import count_older_than, prune_changes, remove_older_than, retention_cutoff
from .reading import as_change, marks, matcher, page, position
from .recording import publish, record, record_many
from .tables import Change, FeedMark, QueuedChange


def init_app(app):
    """Hand the feed the app's settings (its waiting slots, a stream's backlog)."""
    hub.configure(database.obj, app.config)


__all__ = [
    "POLL",
    "STREAM",
    "Change",
    "FeedMark",
    "Follower",
    "QueuedChange",
    "as_change",
    "client_gone",
    "committed",
    "count_older_than",
    "current_hub",
    "init_app",
    "kinds",
    "marks",
    "matcher",
    "page",
    "position",
    "prune_changes",
    "publish",
    "read",
    "record",
    "record_many",
    "remove_older_than",
    "retention_cutoff",
    "stop_waiting",
    "wait_for_session",
]
