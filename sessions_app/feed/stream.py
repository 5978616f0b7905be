"""Server-sent events (the WHATWG ``text/event-stream`` format) for the change stream.

The view hands in what it read from the request (``Accept``, ``Last-Event-ID``,
the WSGI environ) and the response class: no Flask here.
"""

import contextlib
import re
import select
import socket
import time

from marshmallow import ValidationError

from .. import jsonio
from ..fields import SEQ_PATTERN

MIMETYPE = "text/event-stream"
LAST_EVENT_ID = "Last-Event-ID"
_event_id = re.compile(SEQ_PATTERN).fullmatch


def wanted(accept):
    """Tell whether ``accept`` (the request's ``Accept``) asks for an event stream, not JSON."""
    return accept.best_match(["application/json", MIMETYPE]) == MIMETYPE


def event_id(value):
    """Return a ``Last-Event-ID`` header's ``value`` as a seq, None without one; 422 if bad."""
    if value is None:
        return None
    if not _event_id(value):
        raise ValidationError({LAST_EVENT_ID: ["Not an event id this service sent."]})
    return int(value)


def event(event_id, name, data):
    """Return one event: its id, its name, and ``data`` as JSON on one line."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, name.encode(), jsonio.dumps(data))


def position(event_id, note="keep-alive"):
    """Return a block that carries the position read up to and fires no event.

    A block with an ``id:`` and no ``data:`` sets the client's last event id
    (WHATWG: the id is taken before an empty data buffer stops the dispatch),
    so a client whose filter rarely matches reconnects past what was skipped.
    ``note``: the comment it starts with (a heartbeat's is ``keep-alive``).
    """
    return b": %s\nid: %d\n\n" % (note.encode(), event_id)


def response(source, describe, until, environ, response_class):
    """Stream ``source`` (items, or an int position for a heartbeat) as events ``describe`` makes.

    The headers and a first block go out at once, so the client knows the
    stream is open; it carries ``source.after``, the position the stream
    starts from, and the last block the position it ended at: a client that
    got no event still reconnects from where its stream stood, never from a
    later "now".  ``source.close()`` runs when the response ends, however
    it ends.  A client that stops reading cannot hold the stream past
    ``until`` (a ``time.monotonic()``): each event waits for room in its
    socket until then at most, and a socket with no room is shut down.
    ``environ``: the request's; ``response_class``: the app's.
    """
    room = _room_in(environ.get("gunicorn.socket"))

    def events():
        for chunk in _chunks(source, describe):
            if not room(until):
                return
            yield chunk

    stream = response_class(events(), mimetype=MIMETYPE)
    stream.headers["Cache-Control"] = "no-cache"
    # nginx passes the events on as they come instead of buffering them.
    stream.headers["X-Accel-Buffering"] = "no"
    stream.call_on_close(source.close)
    return stream


def _chunks(source, describe):
    yield position(source.after, "stream open")
    for item in source:
        yield position(item) if isinstance(item, int) else event(*describe(item))
    # Past every change sent, never past one that was not (``Follower``).
    yield position(source.after, "stream closed: reconnect with Last-Event-ID")


def _room_in(sock):
    """Return ``room(until)``: whether ``sock`` can take more before ``until``.

    A send on a socket whose client stopped reading blocks for good once the
    buffers fill, with no timeout, holding its thread and its waiting slot.
    So the stream waits for room itself (poll, bounded), and on a socket
    that has none by ``until`` it shuts the socket down: Gunicorn's next
    write fails at once (a broken pipe) and the response is closed.
    Elsewhere (the test client, the dev server) there is always room.
    """
    if sock is None:
        return lambda until: True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT | select.POLLHUP | select.POLLERR)

    def room(until):
        events = poller.poll(max(0, int((until - time.monotonic()) * 1000)))
        if events and events[0][1] == select.POLLOUT:
            return True
        with contextlib.suppress(OSError):  # already gone
            sock.shutdown(socket.SHUT_RDWR)
        return False

    return room
