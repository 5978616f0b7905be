"""Timestamps: stored as integer microseconds since the Unix epoch (UTC).

Integers compare and sort exactly on every database, keep microsecond
precision, and format to RFC 3339 without any time-zone conversion.
"""

import time
from datetime import datetime, timedelta

_EPOCH = datetime(1970, 1, 1)


def now_us():
    """Return the current time in microseconds since the epoch."""
    return time.time_ns() // 1000


def format_us(us):
    """Format epoch microseconds as RFC 3339 UTC: 2024-01-16T10:00:00.123456Z."""
    return (_EPOCH + timedelta(microseconds=us)).isoformat(timespec="microseconds") + "Z"
