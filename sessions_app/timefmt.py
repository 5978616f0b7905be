"""Timestamps: stored as integer microseconds since the Unix epoch (UTC).

Integers compare and sort exactly on every database, keep microsecond
precision, and format to RFC 3339 without any time-zone conversion.
"""

import re
import time
from datetime import date, datetime, timedelta
from functools import lru_cache

_EPOCH = datetime(1970, 1, 1)
_EPOCH_ORDINAL = _EPOCH.toordinal()


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


# RFC 3339 section 5.6: date-time = full-date "T" full-time, with "T" and "Z"
# in either case, any number of second-fraction digits, and a "Z" or numeric
# offset; seconds may be 60 (a leap second), which counts as the next second,
# as Unix time does.
NOT_RFC3339 = "not an RFC 3339 date-time"
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
).fullmatch


def parse_rfc3339_us(text):
    """Return an RFC 3339 date-time as epoch microseconds, rounded down.

    Stored times are whole microseconds, so rounding a finer fraction down
    keeps every comparison exact: ``t > x`` and ``t <= x`` hold for the same
    stored ``t`` as for ``floor(x)``.  Raise ``ValueError`` for anything else.
    """
    match = _RFC3339(text)
    if not match:
        raise ValueError(NOT_RFC3339)
    year, month, day, hour, minute, second = (int(match.group(n)) for n in range(1, 7))
    fraction, _zulu, sign, off_hour, off_minute = match.group(7, 8, 9, 10, 11)
    days = date(year, month, day).toordinal() - _EPOCH_ORDINAL  # checks the day exists
    if hour > 23 or minute > 59 or second > 60:
        raise ValueError("the time of day is out of range")
    offset = 0
    if sign:
        if int(off_hour) > 23 or int(off_minute) > 59:
            raise ValueError("the offset is out of range")
        offset = (int(off_hour) * 60 + int(off_minute)) * 60 * (1 if sign == "+" else -1)
    seconds = ((days * 24 + hour) * 60 + minute) * 60 + second - offset
    micros = int(fraction[:6].ljust(6, "0")) if fraction else 0
    return seconds * 1_000_000 + micros
