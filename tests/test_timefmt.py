"""timefmt: integer microseconds and their RFC 3339 UTC form."""

import random
import re
import time
from datetime import datetime, timedelta

import pytest

from sessions_app.timefmt import format_us, now_us

EPOCH = datetime(1970, 1, 1)
RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


@pytest.mark.parametrize(
    ("us", "text"),
    [
        (0, "1970-01-01T00:00:00.000000Z"),
        (1, "1970-01-01T00:00:00.000001Z"),
        (1_705_399_200_000_000, "2024-01-16T10:00:00.000000Z"),
        (1_705_415_400_123_456, "2024-01-16T14:30:00.123456Z"),
        (951_782_400_000_000, "2000-02-29T00:00:00.000000Z"),
        (253_402_300_799_999_999, "9999-12-31T23:59:59.999999Z"),
    ],
)
def test_format_us(us, text):
    assert format_us(us) == text


def test_format_keeps_microsecond_order():
    base = 1_705_399_200_000_000
    texts = [format_us(base + delta) for delta in (0, 1, 9, 10, 999_999, 1_000_000)]
    assert sorted(texts) == texts
    assert len(set(texts)) == len(texts)


def test_now_is_integer_microseconds_of_the_wall_clock():
    before = time.time_ns() // 1000
    now = now_us()
    after = time.time_ns() // 1000
    assert isinstance(now, int)
    assert before <= now <= after
    assert RFC3339_UTC.fullmatch(format_us(now))


def test_format_us_agrees_with_datetime_everywhere():
    rng = random.Random(7)
    base = 1_705_399_200_000_000
    values = [rng.randrange(0, 253_402_300_800_000_000) for _ in range(2000)]
    values += [base + rng.randrange(-3_000_000, 3_000_000) for _ in range(2000)]
    for us in values:
        reference = (EPOCH + timedelta(microseconds=us)).isoformat(timespec="microseconds")
        assert format_us(us) == reference + "Z"
