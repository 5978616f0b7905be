"""The tokens file (``SESSIONS_API_TOKENS_FILE``): named tokens, by their SHA-256, scoped to agents.

TOML, read with the standard library's ``tomllib``: a format people edit by
hand with comments, a parser that ships with Python (3.11+) and is kept with
it, and no dependency the Gunicorn master would have to import.  This module
uses the standard library only, so the master can check the file itself
(``gunicorn.conf.py``)::

    [[token]]
    name = "team-a-ci"                 # in the request log and /metrics
    sha256 = "<64 hex digits>"         # of the token; the token is never stored
    access = "read-write"              # or "read-only"
    agents = ["team-a-*", "reviewer"]  # optional: exact agent ids or prefixes ending in *

Under Gunicorn the master reads the file when its configuration is loaded,
at start and again on SIGHUP, and ``adopt`` keeps the last good copy in this
module.  The workers are forked from the master afterwards, so they inherit
that copy: a file broken before a SIGHUP leaves the new workers with the
tokens in force before it.
"""

import hashlib
import re
import secrets
import tomllib
from dataclasses import dataclass

ACCESS = ("read-write", "read-only")
_KEYS = {"name", "sha256", "access", "agents"}
#: Names reach log lines and metric labels: keep them plain.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
AGENT_MAX = 255


class TokenFileError(ValueError):
    """The tokens file cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class Entry:
    """One named token: its access and, when scoped, its agents (None: every agent)."""

    name: str
    sha256: str
    access: str
    agents: tuple | None = None

    @property
    def may_write(self):
        return self.access == "read-write"


def digest(token):
    """Return the SHA-256 hex digest of ``token`` (bytes or text), as the file holds it."""
    return hashlib.sha256(token if isinstance(token, bytes) else token.encode()).hexdigest()


def new_token():
    """Return a new random token: 256 bits, URL-safe."""
    return secrets.token_urlsafe(32)


def parse(text, source="SESSIONS_API_TOKENS_FILE"):
    """Return ``{sha256: Entry}`` for the TOML ``text``; ``TokenFileError`` names a bad entry."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TokenFileError(f"{source} is not valid TOML: {exc}") from None
    unknown = sorted(set(document) - {"token"})
    if unknown:
        raise TokenFileError(
            f"{source}: unknown top-level key {unknown[0]!r} (only [[token]] entries belong here)"
        )
    entries = document.get("token", [])
    if not isinstance(entries, list):
        raise TokenFileError(f"{source}: 'token' must be an array of tables, [[token]]")
    found, names = {}, set()
    for number, item in enumerate(entries, 1):
        entry = _entry(item, f"{source}: token {number}")
        where = f"{source}: token {number} ({entry.name!r})"
        if entry.name in names:
            raise TokenFileError(f"{where}: another token has this name")
        if entry.sha256 in found:
            raise TokenFileError(f"{where}: the same sha256 as token {found[entry.sha256].name!r}")
        names.add(entry.name)
        found[entry.sha256] = entry
    return found


def _entry(item, where):
    if not isinstance(item, dict):
        raise TokenFileError(f"{where}: must be a table, [[token]]")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TokenFileError(
            f"{where}: name must be 1 to 64 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit, not {name!r}"
        )
    where = f"{where} ({name!r})"
    unknown = sorted(set(item) - _KEYS)
    if unknown:
        raise TokenFileError(f"{where}: unknown key {unknown[0]!r}")
    sha256 = item.get("sha256")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256.lower()):
        raise TokenFileError(
            f"{where}: sha256 must be the token's SHA-256 as 64 hex digits (never the token itself)"
        )
    access = item.get("access")
    if access not in ACCESS:
        raise TokenFileError(f"{where}: access must be 'read-write' or 'read-only', not {access!r}")
    agents = item.get("agents")
    if agents is not None:
        agents = _agents(agents, where)
    return Entry(name, sha256.lower(), access, agents)


def _agents(agents, where):
    if not isinstance(agents, list) or not agents:
        raise TokenFileError(
            f"{where}: agents must be a non-empty list of agent ids (leave it out for every agent)"
        )
    for agent in agents:
        problem = agent_problem(agent)
        if problem:
            raise TokenFileError(f"{where}: agents: {agent!r} {problem}")
    return tuple(agents)


def agent_problem(agent):
    """Return why ``agent`` is not an agent id or prefix, or None when it is one."""
    if not isinstance(agent, str):
        return "is not a string"
    bare = agent.removesuffix("*")
    if not bare:
        return "names no agent (leave agents out for every agent)"
    if "*" in bare:
        return "may have a '*' only at its end (a prefix)"
    if len(bare) > AGENT_MAX:
        return f"is longer than an agent id ({AGENT_MAX} characters)"
    if "\x00" in bare or any(0xD800 <= ord(c) <= 0xDFFF for c in bare):
        return "holds a character no agent id can hold"
    return None


def read(path):
    """Return ``{sha256: Entry}`` from the file at ``path``."""
    source = f"SESSIONS_API_TOKENS_FILE {path}"
    try:
        with open(path, "rb") as file:
            text = file.read().decode("utf-8")
    except OSError as exc:
        raise TokenFileError(f"{source} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TokenFileError(f"{source} is not UTF-8 text") from None
    return parse(text, source)


# -- the copy in force (see the module's docstring) ----------------------------

_in_force = {}  # path -> {sha256: Entry}, the last good reading of each file


def adopt(path):
    """Read ``path`` and keep it in force; return ``(entries, None)``, or ``(kept, error)``.

    The first reading of a path raises ``TokenFileError``: nothing is in
    force yet to fall back on.  Later a malformed file leaves the copy in
    force as it is and returns it with the error, for the caller to log.
    """
    try:
        entries = read(path)
    except TokenFileError as error:
        if path not in _in_force:
            raise
        return _in_force[path], error
    _in_force[path] = entries
    return entries, None


def in_force(path):
    """Return the entries in force for ``path``: the adopted copy, else a fresh reading."""
    if path in _in_force:
        return _in_force[path]
    return read(path)


def entry_text(entry):
    """Return ``entry`` as the TOML to paste into the file."""
    lines = [
        "[[token]]",
        f"name = {_toml_string(entry.name)}",
        f"sha256 = {_toml_string(entry.sha256)}",
        f"access = {_toml_string(entry.access)}",
    ]
    if entry.agents is not None:
        lines.append(f"agents = [{', '.join(_toml_string(a) for a in entry.agents)}]")
    return "\n".join(lines) + "\n"


def _toml_string(value):
    # A TOML basic string: backslash, quote and control characters escaped.
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return (
        '"' + "".join(c if c >= " " and c != "\x7f" else f"\\u{ord(c):04x}" for c in escaped) + '"'
    )
