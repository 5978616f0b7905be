"""Bearer tokens for ``/api``: read-write and read-only, compared in constant time.

With no token configured the API is open (a warning says so at start when
the service listens beyond loopback).  ``/health`` and ``/metrics`` are
always open: they carry no session data and monitors call them.  The API's
own description (``/api/openapi.json``, ``/api/docs``) is open too: it holds
no data, and a browser opening the docs cannot send a token.
"""

import hashlib
import hmac
import ipaddress

from flask import current_app, request
from werkzeug.exceptions import Forbidden, Unauthorized

REALM = "sessions-api"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = ("/api/openapi.json", "/api/docs")


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


def _protected(path):
    if path != "/api" and not path.startswith("/api/"):
        return False
    return not any(
        path == open_path or path.startswith(open_path + "/") for open_path in OPEN_PATHS
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
    if not _protected(request.path):
        return
    given = _bearer(request.headers.get("Authorization", ""))
    if given is None:
        raise TokenRequired()
    read_write, read_only = current_app.extensions["sessions_app.tokens"]
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


def exposure_warning(config, addresses):
    """Return a warning when the API is open to more than this machine, else None.

    ``addresses`` are Gunicorn's parsed binds: ``(host, port)`` pairs, or a
    path for a unix socket, which exists for a proxy to publish.
    """
    if config["SESSIONS_API_TOKENS"].strip() or config["SESSIONS_API_READONLY_TOKENS"].strip():
        return None
    exposed = [_describe(address) for address in addresses if not _loopback(address)]
    if not exposed:
        return None
    return (
        f"SESSIONS_API_TOKENS is not set and the service listens on {', '.join(exposed)}: "
        "anyone who can reach it can read and change every session."
    )


def _loopback(address):
    if not isinstance(address, tuple):
        return False
    host = address[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _describe(address):
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return f"unix:{address}"


def init_app(app):
    """Require a token on ``/api`` when any is configured."""
    read_write = parse_tokens(app.config["SESSIONS_API_TOKENS"])
    read_only = parse_tokens(app.config["SESSIONS_API_READONLY_TOKENS"])
    if read_write or read_only:
        app.extensions["sessions_app.tokens"] = (read_write, read_only)
        app.before_request(_check)
