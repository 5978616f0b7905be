"""Following the change feed as a server-sent event stream (httpx-sse), across reconnects."""

import time

import httpx
from httpx_sse import EventSource

from . import errors, retries
from .errors import SessionsError
from .models import Change

#: No byte for this long (the service sends a comment at least every 15 s): reconnect.
STREAM_READ_TIMEOUT = 45.0


def follow(http, params, connect_timeout):
    """Yield the changes of ``GET /api/changes`` as a stream, forever.

    ``params`` hold a concrete ``cursor`` (not "latest", so that a
    reconnection before the first event misses nothing).  Every reconnection
    sends the last id the stream gave (an event's, or a position's) as
    ``Last-Event-ID``; a service that is down or restarting is waited out
    with backoff.
    """
    last_id = None
    timeout = httpx.Timeout(connect_timeout, read=STREAM_READ_TIMEOUT)
    while True:
        response = _open(http, params, last_id, timeout)
        events = 0
        try:
            for event in EventSource(response).iter_sse():
                if not event.data:
                    # A position (the stream's start, a heartbeat, its end):
                    # past what the filters skipped, so a reconnection goes
                    # on from there, not from before retention's mark.
                    last_id = event.id or last_id
                    continue
                change = Change.from_json(event.json())
                last_id = event.id or str(change.seq)
                events += 1
                yield change
        except httpx.TransportError:
            events = 0  # cut mid-stream (a restart, a proxy): reconnect from the last event
        finally:
            response.close()
        if not events:
            # Not straight back to a service that keeps closing streams at once.
            time.sleep(retries.WAIT_INITIAL)


def _open(http, params, last_id, timeout):
    """Open the stream, retrying until it opens; raise the answer's error if it is one."""
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    request = http.build_request(
        "GET", "/api/changes", params=params, headers=headers, timeout=timeout
    )
    for attempt in retries.attempts(safe=True, max_retries=0, forever=True):
        with attempt:
            response = http.send(request, stream=True)
            if response.status_code >= 400:
                response.read()
                response.close()
                raise errors.from_response(response)
    if response.headers.get("Content-Type", "").partition(";")[0] != "text/event-stream":
        response.close()
        kind = response.headers.get("Content-Type")
        raise SessionsError(f"GET /api/changes answered {kind!r}, not an event stream")
    return response
