"""``SessionsClient``: every endpoint of the Session API, over one pooled httpx client."""

import json
import os
import uuid
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import quote

import httpx

from . import errors, retries
from .errors import ConnectionFailed, NotFoundError
from .models import Bulk, Change, Count, Message, Page, Receipt, Session, format_timestamp
from .paging import Pager
from .stream import follow

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_RETRIES = 3
#: Seconds a long poll (``watch``, ``tail``) asks the service to wait for news.
POLL_WAIT = 25
#: Extra seconds a long poll's read may take beyond its ``wait``.
POLL_GRACE = 10

IDEMPOTENCY_KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
REQUEST_ID = "X-Request-ID"

_UNSET = object()
_LIST_FILTERS = (
    "agent_id",
    "task_id",
    "status",
    "created_after",
    "created_before",
    "active_after",
    "active_before",
    "data",
)
_CHANGE_FILTERS = ("session_id", "agent_id", "task_id", "type")


def _user_agent():
    try:
        return f"sessions-app-client/{version('sessions_app')}"
    except PackageNotFoundError:
        return "sessions-app-client"


def _new_id():
    return uuid.uuid4().hex


def _quoted(session_id):
    """Return a session id fit for a path: never a way to reach another path."""
    return quote(session_id, safe="")


def _etag(if_match):
    """Return an ``If-Match`` value: a version number becomes its strong tag."""
    if isinstance(if_match, int) and not isinstance(if_match, bool):
        return f'"{if_match}"'
    return str(if_match)


def _query(filters, names):
    """Return the filters given (not None) as query parameters, checked against ``names``."""
    unknown = set(filters) - set(names)
    if unknown:
        raise TypeError(f"unknown filter(s): {', '.join(sorted(unknown))}")
    params = {}
    for name, value in filters.items():
        if value is None:
            continue
        if name.endswith(("_after", "_before")):
            value = format_timestamp(value)
        elif name == "data" and not isinstance(value, str):
            value = json.dumps(value, separators=(",", ":"))
        elif not isinstance(value, str) and name in ("status", "type"):
            value = ",".join(value)
        params[name] = value
    return params


class SessionsClient:
    """A client of the Session API.

    ``SessionsClient(base_url, token=None, timeout=DEFAULT_TIMEOUT, max_retries=3)``;
    ``SessionsClient.from_env()`` reads ``SESSIONS_API_URL`` and
    ``SESSIONS_API_TOKEN``.  Use it as a context manager, or call ``close()``.
    ``transport`` is an httpx transport to send through instead of the
    network (``httpx.WSGITransport(app=app)`` serves an app in process).

    Requests that are safe to send again are retried on a lost connection
    and on 502/503/504 (after ``Retry-After`` when the answer gives one):
    reads, deletes, updates with ``if_match``, and creates and messages, which
    carry an ``Idempotency-Key`` made once per call and sent on every try.
    """

    def __init__(
        self,
        base_url,
        token=None,
        timeout=DEFAULT_TIMEOUT,
        max_retries=DEFAULT_MAX_RETRIES,
        transport=None,
    ):
        headers = {"User-Agent": _user_agent(), "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    @classmethod
    def from_env(cls, environ=None, **kwargs):
        """Build a client from ``SESSIONS_API_URL`` (required) and ``SESSIONS_API_TOKEN``."""
        environ = os.environ if environ is None else environ
        url = kwargs.pop("base_url", None) or environ.get("SESSIONS_API_URL")
        if not url:
            raise ValueError(
                "Set SESSIONS_API_URL to the service's address, e.g. http://127.0.0.1:8000"
            )
        token = kwargs.pop("token", None) or environ.get("SESSIONS_API_TOKEN") or None
        return cls(url, token=token, **kwargs)

    def close(self):
        """Close the pooled connections."""
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return f"SessionsClient({self.base_url!r})"

    # -- sending ------------------------------------------------------------

    def _request(
        self, method, path, *, safe, forever=False, timeout=None, lost=None, keyed=False, **kwargs
    ):
        """Send one logical request, retried as ``safe`` allows; return the response.

        Raise the ``ApiError`` for any answer of 400 or more, and
        ``ConnectionFailed`` when no answer came.  Each attempt that got no
        answer is appended to ``lost``, when given.  A ``keyed`` request (one
        with an ``Idempotency-Key``) answered 409 after such an attempt is
        asked again: the service is still handling the first.
        """
        headers = {REQUEST_ID: _new_id(), **kwargs.pop("headers", {})}
        if timeout is not None:
            kwargs["timeout"] = timeout
        lost = [] if lost is None else lost
        try:
            for attempt in retries.attempts(safe, self.max_retries, forever):
                with attempt:
                    try:
                        response = self._http.request(method, path, headers=headers, **kwargs)
                    except httpx.TransportError as exc:
                        lost.append(exc)
                        raise
                    if response.status_code >= 400:
                        error = errors.from_response(response)
                        error.in_flight = keyed and bool(lost) and response.status_code == 409
                        raise error
                    return response
        except httpx.TransportError as exc:
            raise ConnectionFailed(
                f"{method} {self.base_url}{path}: {exc or type(exc).__name__}"
            ) from exc
        raise AssertionError("unreachable: stamina returns or raises")  # pragma: no cover

    def _get(self, path, params=None, **kwargs):
        return self._request("GET", path, params=params, safe=True, **kwargs).json()

    def _post(self, path, body, idempotency_key):
        key = idempotency_key or _new_id()
        headers = {IDEMPOTENCY_KEY: key}
        return self._request("POST", path, json=body, headers=headers, safe=True, keyed=True)

    # -- sessions -----------------------------------------------------------

    def create(self, agent_id, task_id=None, prompt=None, data=None, *, idempotency_key=None):
        """Create a session; return it (``Session``, full form)."""
        body = {"agent_id": agent_id}
        for name, value in (("task_id", task_id), ("prompt", prompt), ("data", data)):
            if value is not None:
                body[name] = value
        response = self._post("/api/sessions", body, idempotency_key)
        return Session.from_json(response.json(), etag=response.headers.get("ETag"))

    def get(self, session_id):
        """Return the session ``session_id`` (``NotFoundError`` if there is none)."""
        response = self._request("GET", f"/api/sessions/{_quoted(session_id)}", safe=True)
        return Session.from_json(response.json(), etag=response.headers.get("ETag"))

    def update(self, session_id, *, status=None, data=None, prompt=_UNSET, if_match=None):
        """Change a session's ``status``, merge ``data`` into it, or set its ``prompt``.

        ``data`` is a JSON Merge Patch (a key set to None is removed);
        ``prompt=None`` clears the prompt.  ``if_match`` (a version, or an
        ETag) makes the change only if the session still has that version
        (``PreconditionFailedError`` if not), and makes the request safe to
        retry.
        """
        body = {}
        if status is not None:
            body["status"] = status
        if data is not None:
            body["data"] = data
        if prompt is not _UNSET:
            body["prompt"] = prompt
        headers = {} if if_match is None else {"If-Match": _etag(if_match)}
        response = self._request(
            "PATCH",
            f"/api/sessions/{_quoted(session_id)}",
            json=body,
            headers=headers,
            safe=if_match is not None,
        )
        return Session.from_json(response.json(), etag=response.headers.get("ETag"))

    def delete(self, session_id, *, if_match=None):
        """Delete a session and its messages.

        ``NotFoundError`` when there is no such session, except after an
        attempt that got no answer: that attempt is what deleted it.
        """
        headers = {} if if_match is None else {"If-Match": _etag(if_match)}
        lost = []
        try:
            self._request(
                "DELETE",
                f"/api/sessions/{_quoted(session_id)}",
                headers=headers,
                safe=True,
                lost=lost,
            )
        except NotFoundError:
            if not lost:
                raise

    def sessions(self, *, limit=None, cursor=None, sort=None, order=None, **filters):
        """Return the sessions matching ``filters``, newest first, as a lazy ``Pager``.

        Filters: ``agent_id``, ``task_id``, ``status`` (one, or a list),
        ``created_after``, ``created_before``, ``active_after``,
        ``active_before`` (aware datetimes or RFC 3339 text), ``data`` (a
        dict the sessions' data must contain, as jsonb ``@>``: ``{"pr": 42}``).  ``limit`` is
        the page size; iterate for every session, or take ``.page()``.
        """
        params = _query(filters, _LIST_FILTERS)
        for name, value in (("limit", limit), ("sort", sort), ("order", order)):
            if value is not None:
                params[name] = value

        def fetch(page_cursor):
            query = params if page_cursor is None else {**params, "cursor": page_cursor}
            doc = self._get("/api/sessions", query)
            return Page(
                [Session.from_json(item) for item in doc["sessions"]], doc["next_cursor"], doc
            )

        return Pager(fetch, cursor)

    def count(self, **filters):
        """Count the sessions matching ``filters`` (those of ``sessions()``), also by status."""
        return Count.from_json(self._get("/api/sessions/count", _query(filters, _LIST_FILTERS)))

    def bulk(
        self, *, set_status=None, delete=False, dry_run=False, limit=None, idempotency_key=None,
        **filters,
    ):  # fmt: skip
        """Move to ``set_status``, or ``delete``, the sessions matching ``filters``: a ``Bulk``.

        The filters of ``sessions()`` (``status`` among them: which sessions,
        not what they become); ``all=True`` for every session (no
        filter at all is refused).  Up to ``limit`` sessions (1,000 by
        default), oldest first; repeat until ``.remaining`` is 0.  Safe to
        retry: each call carries an ``Idempotency-Key``.
        """
        if (set_status is None) == (not delete):
            raise TypeError("give exactly one of set_status= and delete=True")
        every = filters.pop("all", False)
        query = _query(filters, _LIST_FILTERS)
        body_filter = {**query, "data": filters["data"]} if "data" in query else dict(query)
        if "status" in body_filter:
            wanted = filters["status"]
            body_filter["status"] = wanted if isinstance(wanted, str) else list(wanted)
        if every:
            body_filter["all"] = True
        body = {"filter": body_filter, "dry_run": dry_run}
        body.update({"set": {"status": set_status}} if set_status else {"delete": True})
        if limit is not None:
            body["limit"] = limit
        response = self._post("/api/sessions/bulk", body, idempotency_key)
        return Bulk.from_json(response.json())

    # -- messages -----------------------------------------------------------

    def send(self, session_id, content, role=None, *, idempotency_key=None):
        """Send a message to a session; return its ``Receipt``."""
        body = {"content": content}
        if role is not None:
            body["role"] = role
        response = self._post(f"/api/sessions/{_quoted(session_id)}/message", body, idempotency_key)
        return Receipt.from_json(response.json(), replayed=response.headers.get(REPLAYED) == "true")

    def messages(self, session_id, *, order=None, limit=None, cursor=None):
        """Return a session's messages as a lazy ``Pager``: oldest first, or newest with "desc"."""
        params = {}
        for name, value in (("order", order), ("limit", limit)):
            if value is not None:
                params[name] = value

        def fetch(page_cursor):
            query = params if page_cursor is None else {**params, "cursor": page_cursor}
            doc = self._get(f"/api/sessions/{_quoted(session_id)}/messages", query)
            return Page(
                [Message.from_json(item) for item in doc["messages"]], doc["next_cursor"], doc
            )

        return Pager(fetch, cursor)

    def tail(self, session_id, cursor=None, *, wait=POLL_WAIT):
        """Yield a session's messages from the first (or after ``cursor``), then each new one.

        Runs until the caller stops; a lost connection or a restarting
        service is waited out.  ``NotFoundError`` when the session is deleted.
        """
        path = f"/api/sessions/{_quoted(session_id)}/messages"
        while True:
            params = {"wait": wait, "limit": 1000}
            if cursor is not None:
                params["cursor"] = cursor
            doc = self._get(path, params, forever=True, timeout=self._poll_timeout(wait))
            for item in doc["messages"]:
                yield Message.from_json(item)
            cursor = doc["next_cursor"]

    # -- the change feed ----------------------------------------------------

    def changes(self, cursor=None, *, limit=None, wait=None, **filters):
        """Return one page of the change feed (``Page`` of ``Change``) after ``cursor``.

        ``cursor="latest"`` starts from now; filters: ``session_id``,
        ``agent_id``, ``task_id``, ``type`` (one or a list).
        """
        params = _query(filters, _CHANGE_FILTERS)
        for name, value in (("cursor", cursor), ("limit", limit), ("wait", wait)):
            if value is not None:
                params[name] = value
        return self._changes(params)

    def _changes(self, params, forever=False):
        wait = params.get("wait")
        timeout = self._poll_timeout(wait) if wait else None
        doc = self._get("/api/changes", params, timeout=timeout, forever=forever)
        return Page([Change.from_json(item) for item in doc["changes"]], doc["next_cursor"], doc)

    def watch(self, cursor="latest", *, stream=False, wait=POLL_WAIT, **filters):
        """Yield every change matching ``filters`` after ``cursor`` (default: from now), forever.

        Long polls the feed (``stream=True``: reads it as an event stream),
        each request continuing where the last ended: a lost connection or a
        restarting service is waited out, and nothing is missed or repeated.
        ``GoneError`` (410) when the feed no longer holds the changes after
        the cursor: list the sessions again, then watch from ``"latest"``.
        """
        params = _query(filters, _CHANGE_FILTERS)
        if cursor == "latest":
            # Turned into a position at once, so a reconnection misses nothing.
            first = self._changes({**params, "cursor": "latest"}, forever=True)
            yield from first.items
            cursor = first.next_cursor
        if stream:
            yield from follow(self._http, {**params, "cursor": cursor}, self.timeout)
            return
        while True:
            page = self._changes({**params, "cursor": cursor, "wait": wait}, forever=True)
            yield from page.items
            cursor = page.next_cursor

    def _poll_timeout(self, wait):
        return httpx.Timeout(self.timeout, read=wait + POLL_GRACE)

    def health(self):
        """Return ``/health``'s answer; ``ServiceUnavailableError`` when the database is down."""
        return self._get("/health")
