"""What each endpoint does, said once at its view: ``@describe(...)``.

A view's description sits under its route, in the manner of apifairy and
flask-smorest: its summary, its In and Out schemas, its success status, the
errors it can answer and the request headers it reads::

    @bp.get("/sessions")
    @describe("List sessions, newest first", "...", query=session_list_query_schema,
              response=session_list_schema, errors=(400, 422, 503))
    def list_sessions(): ...

``openapi.py`` builds the API description from the app's routes and these;
a route whose view has none is an error there.  This module imports nothing,
so every module with views can use it.
"""

from dataclasses import dataclass, replace

_ATTRIBUTE = "__operation__"


@dataclass(frozen=True)
class Operation:
    """What a route does and what it reads, returns and refuses."""

    operation_id: str
    summary: str
    description: str
    status: int = 200
    #: Out schema of the success answer (an instance or a class).
    response: object = None
    #: In schema of the query string.
    query: object = None
    #: In schema of the JSON body.
    body: object = None
    #: Statuses of the problems it can answer (401 and 403 are added where tokens apply).
    errors: tuple = ()
    tag: str = "sessions"
    #: Operation ids reachable from its answer with the new session's id (and its Location).
    links: tuple = ()
    media_type: str = "application/json"
    #: Names of the request headers it reads (contract sections 5 and 6).
    headers: tuple = ()
    #: Its success answers with the session's ``ETag``.
    tagged: bool = False
    #: Also answers ``text/event-stream`` (server-sent events) when asked for it.
    streams: bool = False
    #: ``(path ending, operation id)``: a route of the same view whose path ends
    #: so is the same operation under another name.
    aliases: tuple = ()

    def alias(self, operation_id, method, path):
        """Return this operation served at another path too, under ``operation_id``."""
        return replace(
            self,
            operation_id=operation_id,
            summary=f"{self.summary} (same as {method} …/{path.rpartition('/')[2]})",
            description=f"The same operation as `{method} {path}`.",
            aliases=(),
        )


def describe(summary, description, *, operation_id=None, aliases=None, **details):
    """Record what the view below does; its name is the operation id unless given.

    ``details`` are ``Operation``'s other fields; ``aliases`` maps the ending
    of another route's path to that route's operation id.
    """

    def record(view):
        operation = Operation(
            operation_id or view.__name__,
            summary,
            description,
            aliases=tuple((aliases or {}).items()),
            **{name: _frozen(value) for name, value in details.items()},
        )
        setattr(view, _ATTRIBUTE, operation)
        return view

    return record


def described(view):
    """Return the ``Operation`` recorded on ``view``, None when it has none."""
    return getattr(view, _ATTRIBUTE, None)


def _frozen(value):
    return tuple(value) if isinstance(value, list) else value
