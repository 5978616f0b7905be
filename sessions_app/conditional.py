"""Versions as entity tags, and the headers of safe retries and conditional requests.

Every header name of contract sections 5 and 6 is here, once: the views,
the models, ``idempotency.py`` and the API description read them from this
module.  A session's tag is its version in quotes (``"3"``), a strong tag.
``If-Match`` compares strongly (``W/"3"`` never matches), ``If-None-Match``
weakly (``W/"3"`` matches ``"3"``), as RFC 9110 section 8.8.3.2 says.
"""

import re
from dataclasses import dataclass

from .errors import InvalidHeader, NotModified
from .storage_errors import VersionMismatch

ETAG = "ETag"
IF_MATCH = "If-Match"
IF_NONE_MATCH = "If-None-Match"
IDEMPOTENCY_KEY = "Idempotency-Key"
IDEMPOTENT_REPLAYED = "Idempotent-Replayed"

# RFC 9110: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE, where etagc is any
# visible character but DQUOTE, obs-text too; list elements may be empty.
# The same text is a Python and an ECMA (JSON Schema) pattern, so the API
# description declares exactly what the service accepts.
_TAG = r'(W/)?"([!#-~\u0080-\u00ff]*)"'
TAGS_PATTERN = rf"^[ \t]*(?:\*|(?:,[ \t]*)*{_TAG}(?:[ \t]*,(?:[ \t]*{_TAG})?)*)[ \t]*$"
_TAGS = re.compile(TAGS_PATTERN)
_EACH = re.compile(_TAG)
#: What a session's ETag looks like (a pattern for the API description).
ETAG_PATTERN = r'^"[1-9][0-9]*"$'


def etag(version):
    """Return the entity tag of a session at ``version``."""
    return f'"{version}"'


@dataclass(frozen=True)
class Tags:
    """The tags of an ``If-Match`` or ``If-None-Match`` header; ``any`` for ``*``."""

    any: bool = False
    strong: frozenset = frozenset()
    weak: frozenset = frozenset()

    def match_strongly(self, version):
        return self.any or str(version) in self.strong

    def match_weakly(self, version):
        return self.any or str(version) in self.strong or str(version) in self.weak


def parse_tags(value):
    """Parse ``*`` or a comma-separated list of entity tags; ``ValueError`` if neither."""
    if not _TAGS.fullmatch(value):
        raise ValueError(value)
    if value.strip(" \t") == "*":
        return Tags(any=True)
    strong, weak = set(), set()
    for is_weak, opaque in _EACH.findall(value):
        (weak if is_weak else strong).add(opaque)
    return Tags(strong=frozenset(strong), weak=frozenset(weak))


def header_tags(name, value):
    """Return the tags of the ``name`` header sent as ``value``, None without one; 400 if malformed.

    The view reads the header; this module reads no request.
    """
    if value is None:
        return None
    try:
        return parse_tags(value)
    except ValueError:
        raise InvalidHeader(
            f"{name} must be * or a comma-separated list of quoted entity tags, "
            'such as "3" or W/"3".'
        ) from None


def check_if_match(tags, version):
    """Raise ``VersionMismatch`` (412) unless ``If-Match`` (if given) names ``version``."""
    if tags is not None and not tags.match_strongly(version):
        raise VersionMismatch(version)


def check_if_none_match(tags, version):
    """Raise ``NotModified`` when ``If-None-Match`` names ``version``: the client has it."""
    if tags is not None and tags.match_weakly(version):
        raise NotModified({ETAG: etag(version)})
