"""When a request is sent again, and after how long.

stamina (on tenacity) supplies exponential backoff with full jitter and a
bound on attempts; its backoff hook lets an answer's ``Retry-After`` set
the wait instead.  What this module decides is *whether* a failure may be
retried: only a request the service may see twice without harm.
"""

import random

import httpx
import stamina

from .errors import ApiError

#: Answers that say "try again": the service's database is away (503), or a
#: proxy in front of it found no worker (502) or waited too long (504).
RETRY_STATUSES = frozenset({502, 503, 504})

#: A ``Retry-After`` longer than this is not waited for: the error is raised.
MAX_RETRY_AFTER = 60.0

#: Backoff: the first wait, the longest, and the jitter added to each.
WAIT_INITIAL = 0.2
WAIT_MAX = 5.0
WAIT_JITTER = 0.5

# Nothing of the request reached the service: any request may be sent again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def decide(safe):
    """Return stamina's backoff hook for a request that is ``safe`` to repeat or not.

    The hook answers False (raise now), True (wait as the backoff says) or
    a number of seconds (the answer's ``Retry-After``).
    """

    def hook(exc):
        if isinstance(exc, _NOT_SENT):
            return True
        if not safe:
            return False
        if isinstance(exc, httpx.TransportError):
            return True
        if getattr(exc, "in_flight", False):
            return True
        if isinstance(exc, ApiError) and exc.status in RETRY_STATUSES:
            if exc.retry_after is None:
                return True
            if exc.retry_after > MAX_RETRY_AFTER:
                return False
            # A little jitter, so clients told the same moment do not all come back at once.
            return exc.retry_after + random.uniform(0, WAIT_JITTER)
        return False

    return hook


def attempts(safe, max_retries, forever=False):
    """Return stamina's attempts for one logical call: ``for attempt in attempts(...)``.

    ``forever`` (watching, tailing) retries with no bound, until the caller
    stops; otherwise at most ``max_retries`` retries follow the first try.
    """
    return stamina.retry_context(
        on=decide(safe),
        attempts=None if forever else max_retries + 1,
        timeout=None,
        wait_initial=WAIT_INITIAL,
        wait_max=WAIT_MAX,
        wait_jitter=WAIT_JITTER,
    )
