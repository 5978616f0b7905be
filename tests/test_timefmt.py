"""timefmt: integer microseconds and their RFC 3339 UTC form."""

import random
import re
import time
from datetime import datetime, timedelta

import pytest

from sessions_app.timefmt import format_us, now_us, parse_rfc3339_us

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


# -- parsing RFC 3339 (section 8's time windows) --------------------------------
T = 1_705_399_200_000_000  # 2024-01-16T10:00:00Z


@pytest.mark.parametrize(
    ("text", "us"),
    [
        ("2024-01-16T10:00:00Z", T),
        ("2024-01-16t10:00:00z", T),
        ("2024-01-16T10:00:00.5Z", T + 500_000),
        ("2024-01-16T10:00:00.000001Z", T + 1),
        ("2024-01-16T10:00:00.123456Z", T + 123_456),
        # Finer than a microsecond: rounded down, which keeps > and <= exact.
        ("2024-01-16T10:00:00.1234569Z", T + 123_456),
        ("2024-01-16T10:00:00.000000999Z", T),
        ("2024-01-16T11:00:00+01:00", T),
        ("2024-01-16T15:30:00.000001+05:30", T + 1),
        ("2024-01-16T00:00:00-10:00", T),
        ("2024-01-16T10:00:00+00:00", T),
        ("2024-01-16T10:00:00-00:00", T),
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59.999999Z", -1),
        ("2016-12-31T23:59:60Z", 1_483_228_800_000_000),  # a leap second: the next one
        ("2024-02-29T00:00:00Z", 1_709_164_800_000_000),
        ("9999-12-31T23:59:59.999999Z", 253_402_300_799_999_999),
    ],
)
def test_rfc3339_is_read_to_the_microsecond(text, us):
    assert parse_rfc3339_us(text) == us


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2024-01-16",
        "2024-01-16T10:00:00",  # no offset
        "2024-01-16T10:00Z",  # no seconds
        "2024-01-16 10:00:00Z",  # a space for T
        "2024-01-16T10:00:00 01:00",  # "+" decoded as a space
        "2024-01-16T10:00:00.Z",
        "2024-01-16T10:00:00+0100",
        "2024-01-16T10:00:00+01",
        "2024-1-16T10:00:00Z",
        "2024-01-16T10:00:00ZZ",
        " 2024-01-16T10:00:00Z",
        "2024-01-16T10:00:00Z ",
        "١٩٧٠-01-01T00:00:00Z",  # digits of another script
        "2024-02-30T00:00:00Z",
        "2023-02-29T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-00-01T00:00:00Z",
        "2024-01-00T00:00:00Z",
        "2024-01-16T24:00:00Z",
        "2024-01-16T10:60:00Z",
        "2024-01-16T10:00:61Z",
        "2024-01-16T10:00:00+24:00",
        "2024-01-16T10:00:00+01:60",
        "0000-01-01T00:00:00Z",
        "1705399200",
    ],
)
def test_anything_else_is_refused(text):
    with pytest.raises(ValueError):
        parse_rfc3339_us(text)


def test_parsing_reads_back_what_format_writes():
    for _ in range(500):
        us = random.randrange(-(10**16), 10**17)
        assert parse_rfc3339_us(format_us(us)) == us
