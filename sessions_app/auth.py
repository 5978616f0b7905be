"""Bearer tokens for ``/api``: read-write and read-only, compared in constant time.

With no token configured the API is open (``exposure`` warns at start when
the service listens beyond loopback).  ``/health`` and ``/metrics`` are
always open: they carry no session data and monitors call them.  Paths
under ``/api`` that hold no data are left open by the module that serves
them (``leave_open``): the API's description, which a browser opening the
docs could not send a token for.
"""

import hashlib
import hmac

from flask import current_app, request
from werkzeug.exceptions import Forbidden, Unauthorized

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


def _matches(given, tokens):
    # Compare with every token, without stopping at a match, so the time
    # taken says nothing about which token, or how much of one, matched.
    found = False
    for token in tokens:
        found |= hmac.compare_digest(given, token)
    return found


def _check():
    if not needs_token(current_app, request.path):
        return
    given = _bearer(request.headers.get("Authorization", ""))
    if given is None:
        raise TokenRequired()
    read_write, read_only = current_app.extensions[_TOKENS]
    may_write = _matches(given, read_write)
    may_read = _matches(given, read_only)
    if may_write or (may_read and request.method in READ_METHODS):
        return
    if may_read:
        raise ReadOnlyToken()
    raise TokenRequired(invalid=True)


def caller():
    """Name the caller, for keeping each token's idempotency keys apart.

    ``""`` when no token is configured; else a hash of the request's bearer
    token (checked already), so that no token is stored anywhere.
    """
    if "sessions_app.tokens" not in current_app.extensions:
        return ""
    token = _bearer(request.headers.get("Authorization", "")) or b""
    return hashlib.sha256(b"sessions_app caller\0" + token).hexdigest()[:32]


def init_app(app):
    """Require a token on ``/api`` when any is configured."""
    read_write = parse_tokens(app.config["SESSIONS_API_TOKENS"])
    read_only = parse_tokens(app.config["SESSIONS_API_READONLY_TOKENS"])
    if read_write or read_only:
        app.extensions[_TOKENS] = (read_write, read_only)
        app.before_request(_check)
