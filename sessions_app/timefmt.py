"""Timestamps: stored as integer microseconds since the Unix epoch (UTC).

Integers compare and sort exactly on every database, keep microsecond
precision, and format to RFC 3339 without any time-zone conversion.
"""

import time
from datetime import datetime, timedelta
from functools import lru_cache

_EPOCH = datetime(1970, 1, 1)


def now_us():
    """Return the current time in microseconds since the epoch."""
    return time.time_ns() // 1000


def format_us(us):
    """Format epoch microseconds as RFC 3339 UTC: 2024-01-16T10:00:00.123456Z."""
    seconds, micros = divmod(us, 1_000_000)
    return f"{_format_second(seconds)}.{micros:06d}Z"


# A page of sessions made in the same few seconds formats the same seconds
# again and again; a cache hit costs a tenth of building the datetime.
@lru_cache(maxsize=4096)
def _format_second(seconds):
    return (_EPOCH + timedelta(seconds=seconds)).isoformat(timespec="seconds")
