"""Bearer tokens for ``/api``: read-write and read-only, compared in constant time.

With no token configured the API is open (``exposure`` warns at start when
the service listens beyond loopback).  ``/health`` and ``/metrics`` are
always open: they carry no session data and monitors call them.  Paths
under ``/api`` that hold no data are left open by the module that serves
them (``leave_open``): the API's description, which a browser opening the
docs could not send a token for.

Tokens come from ``SESSIONS_API_TOKENS`` and ``SESSIONS_API_READONLY_TOKENS``
(unscoped, compared in constant time with each), and from the tokens file
(``tokenfile``), which holds only their SHA-256: the presented token is
hashed and its digest looked up.  A dict look-up compares digests, not
tokens, so its timing tells nothing about any token.  A token of the file
with ``agents`` makes its requests' scope (``scoping``) theirs, for storage
to apply; ``g.token_name`` names the token for the request log and metrics.
"""

import hashlib
import hmac

import click
from flask import current_app, g, request
from flask.cli import AppGroup
from werkzeug.exceptions import Forbidden, Unauthorized

from . import scoping, tokenfile

REALM = "sessions-api"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_TOKENS = "sessions_app.tokens"
_OPEN_PATHS = "sessions_app.open_paths"


class TokenRequired(Unauthorized):
    def __init__(self, invalid=False):
        # realm must be a quoted string (RFC 7235); Werkzeug's
        # WWWAuthenticate writes it bare, so the header is written here.
        self.challenge = f'Bearer realm="{REALM}"'
        if invalid:
            self.challenge += ', error="invalid_token"'
            super().__init__("The bearer token is not valid.")
        else:
            super().__init__("This endpoint needs an 'Authorization: Bearer <token>' header.")

    def get_headers(self, environ=None, scope=None):
        return [*super().get_headers(environ, scope), ("WWW-Authenticate", self.challenge)]


class ReadOnlyToken(Forbidden):
    description = "This token may only read; it cannot change anything."


def parse_tokens(value):
    """Return the tokens in a comma-separated list, as bytes, blanks dropped."""
    return [token.strip().encode() for token in value.split(",") if token.strip()]


def required(app):
    """Tell whether ``app`` asks for tokens at all (any is configured)."""
    return _TOKENS in app.extensions


def leave_open(app, path):
    """Serve ``path``, and every path under it, without a token."""
    app.extensions.setdefault(_OPEN_PATHS, []).append(path)


def needs_token(app, path):
    """Tell whether a request for ``path`` must carry one of ``app``'s tokens."""
    if not required(app) or (path != "/api" and not path.startswith("/api/")):
        return False
    return not any(
        path == open_path or path.startswith(open_path + "/")
        for open_path in app.extensions.get(_OPEN_PATHS, ())
    )


def _bearer(header):
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    # WSGI carries headers as latin-1 text, so this never fails.
    return credentials.strip().encode("latin-1")


def _matching(given, tokens):
    # Compare with every token, without stopping at a match, so the time
    # taken says nothing about which token, or how much of one, matched.
    found = 0
    for number, token in enumerate(tokens, 1):
        if hmac.compare_digest(given, token):
            found = number
    return found


class Tokens:
    """Every token the app knows: the two variables' lists, and the file's entries by digest."""

    def __init__(self, read_write, read_only, entries):
        self.read_write, self.read_only, self.entries = read_write, read_only, entries

    def identify(self, given):
        """Return ``(name, may_write, scope)`` for the token ``given``, or None if unknown."""
        write = _matching(given, self.read_write)
        read = _matching(given, self.read_only)
        entry = self.entries.get(hashlib.sha256(given).hexdigest())
        if write:
            return f"SESSIONS_API_TOKENS#{write}", True, None
        if read:
            return f"SESSIONS_API_READONLY_TOKENS#{read}", False, None
        if entry is None:
            return None
        scope = None if entry.agents is None else scoping.Scope.of(entry.agents)
        return entry.name, entry.may_write, scope


def _check():
    if not needs_token(current_app, request.path):
        return
    given = _bearer(request.headers.get("Authorization", ""))
    if given is None:
        raise TokenRequired()
    known = current_app.extensions[_TOKENS].identify(given)
    if known is None:
        raise TokenRequired(invalid=True)
    g.token_name, may_write, scope = known
    if not may_write and request.method not in READ_METHODS:
        raise ReadOnlyToken()
    if scope is not None:
        g.scope_token = scoping.enter(scope)


def _end_scope(_exc):
    token = g.pop("scope_token", None)
    if token is not None:
        scoping.leave(token)


def token_name():
    """Return the name of the request's token, None when it carries none the app knows."""
    return g.get("token_name")


def caller():
    """Name the caller, for keeping each token's idempotency keys apart.

    ``""`` when no token is configured; else a hash of the request's bearer
    token (checked already), so that no token is stored anywhere.
    """
    if "sessions_app.tokens" not in current_app.extensions:
        return ""
    token = _bearer(request.headers.get("Authorization", "")) or b""
    return hashlib.sha256(b"sessions_app caller\0" + token).hexdigest()[:32]


tokens_cli = AppGroup("tokens", help="Tokens of the tokens file (SESSIONS_API_TOKENS_FILE).")


@tokens_cli.command("new")
@click.option("--name", required=True, help="The token's name, for the log and /metrics.")
@click.option(
    "--agents",
    multiple=True,
    metavar="AGENT",
    help="An agent id, or a prefix ending in *, the token may act for (repeat it); default: all.",
)
@click.option("--read-only", is_flag=True, help="The token may only read.")
def new_token_command(name, agents, read_only):
    """Print a new random token, once, and the entry to add to the tokens file."""
    token = tokenfile.new_token()
    entry = tokenfile.Entry(
        name=name,
        sha256=tokenfile.digest(token),
        access="read-only" if read_only else "read-write",
        agents=tuple(agents) or None,
    )
    text = tokenfile.entry_text(entry)
    try:
        tokenfile.parse(text, source="the new token")  # the same rules as the file's
    except tokenfile.TokenFileError as error:
        raise click.UsageError(str(error)) from None
    click.echo(f"Token (shown only now; give it to its client): {token}")
    click.echo("# Add this entry to SESSIONS_API_TOKENS_FILE, then reload Gunicorn (SIGHUP):")
    click.echo(text.rstrip("\n"))


def init_app(app):
    """Require a token on ``/api`` when any is configured (a tokens file counts, even empty)."""
    read_write = parse_tokens(app.config["SESSIONS_API_TOKENS"])
    read_only = parse_tokens(app.config["SESSIONS_API_READONLY_TOKENS"])
    path = app.config["SESSIONS_API_TOKENS_FILE"]
    entries = tokenfile.in_force(path) if path else {}
    if read_write or read_only or path:
        app.extensions[_TOKENS] = Tokens(read_write, read_only, entries)
        app.before_request(_check)
        app.teardown_request(_end_scope)
    app.cli.add_command(tokens_cli)
