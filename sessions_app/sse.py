"""Server-sent events (the WHATWG ``text/event-stream`` format) for the change stream."""

import re

from flask import current_app, request
from marshmallow import ValidationError

from . import jsonio, waiting

MIMETYPE = "text/event-stream"
LAST_EVENT_ID = "Last-Event-ID"
_event_id = re.compile(r"0|[1-9][0-9]{0,17}").fullmatch


def wanted():
    """Tell whether the client asks for an event stream rather than JSON."""
    return request.accept_mimetypes.best_match(["application/json", MIMETYPE]) == MIMETYPE


def last_event_id():
    """Return the ``Last-Event-ID`` request header as a seq, None when absent; 422 if malformed."""
    value = request.headers.get(LAST_EVENT_ID)
    if value is None:
        return None
    if not _event_id(value):
        raise ValidationError({LAST_EVENT_ID: ["Not an event id this service sent."]})
    return int(value)


def client_gone():
    """Return a function telling whether this request's client has gone."""
    return waiting.client_gone(request.environ)


def event(event_id, name, data):
    """Return one event: its id, its name, and ``data`` as JSON on one line."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, name.encode(), jsonio.dumps(data))


def comment(text):
    """Return a comment line: clients ignore it, proxies see the stream is alive."""
    return b": %s\n\n" % text.encode()


def response(source, describe):
    """Stream ``source`` (items, or None for a heartbeat) as events described by ``describe``.

    The headers and a first comment go out at once, so the client knows the
    stream is open; ``source.close()`` runs when the response ends, however
    it ends.
    """

    def events():
        yield comment("stream open")
        for item in source:
            yield comment("keep-alive") if item is None else event(*describe(item))
        yield comment("stream closed: reconnect with Last-Event-ID")

    stream = current_app.response_class(events(), mimetype=MIMETYPE)
    stream.headers["Cache-Control"] = "no-cache"
    # nginx passes the events on as they come instead of buffering them.
    stream.headers["X-Accel-Buffering"] = "no"
    stream.call_on_close(source.close)
    return stream
