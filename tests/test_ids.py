"""ids: prefixed, URL-safe, time-ordered tokens with 80 random bits."""

import base64
import re
from urllib.parse import quote

import pytest

from sessions_app import ids

CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
RFC4648 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def decode(token):
    """Return the 17 bytes a token encodes (56 bits of time, 80 random bits)."""
    rfc = token.translate(str.maketrans(CROCKFORD, RFC4648))
    return base64.b32decode(rfc + "====")[:17]


def test_session_and_message_ids_have_their_prefix_and_pattern():
    session_id, message_id = ids.new_session_id(), ids.new_message_id()
    assert re.fullmatch(ids.SESSION_ID_PATTERN, session_id)
    assert re.fullmatch(ids.MESSAGE_ID_PATTERN, message_id)
    assert session_id.startswith("session-")
    assert message_id.startswith("msg-")


def test_ids_are_url_safe():
    for _ in range(200):
        token = ids.new_token()
        assert quote(token, safe="") == token
        assert set(token) <= set(CROCKFORD)
        assert len(token) == 28


def test_token_carries_the_time_then_80_random_bits():
    at_us = 1_705_399_200_123_456
    raw = decode(ids.new_token(at_us))
    assert int.from_bytes(raw[:7], "big") == at_us
    randoms = {decode(ids.new_token(at_us))[7:] for _ in range(1000)}
    assert len(randoms) == 1000


def test_same_time_gives_different_ids():
    at_us = 1_705_399_200_000_000
    assert len({ids.new_session_id(at_us) for _ in range(1000)}) == 1000


@pytest.mark.parametrize(
    "times",
    [
        [0, 1, 2, 255, 256, 2**32, 2**40, 2**55, 2**56 - 1],
        [1_705_399_200_000_000 + delta for delta in (0, 1, 999, 1000, 10**6, 86_400 * 10**6)],
    ],
)
def test_ids_sort_by_time(times):
    made = [ids.new_session_id(at_us) for at_us in times]
    assert sorted(made) == made
    assert len(set(made)) == len(made)


def test_default_time_is_now():
    before = ids.now_us()
    token = ids.new_token()
    after = ids.now_us()
    assert before <= int.from_bytes(decode(token)[:7], "big") <= after


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("session-0sgp1sc69wemdadfegff1skehxg0", True),
        ("session-0000000000000000000000000000", True),
        ("session-0SGP1SC69WEMDADFEGFF1SKEHXG0", False),
        ("session-0sgp1sc69wemdadfegff1skehxg", False),
        ("session-0sgp1sc69wemdadfegff1skehxg00", False),
        ("session-0sgp1sc69wemdadfegff1skehxgu", False),
        ("session-isgp1sc69wemdadfegff1skehxg0", False),
        ("msg-0sgp1sc69wemdadfegff1skehxg0", False),
        ("0sgp1sc69wemdadfegff1skehxg0", False),
        ("", False),
    ],
)
def test_is_session_id(text, expected):
    assert bool(ids.is_session_id(text)) is expected


# -- the ids that bound a creation time (time windows on created_at) --------------


@pytest.mark.parametrize("at_us", [0, 1, 1_705_399_200_123_456, 2**56 - 2])
def test_ids_made_at_an_instant_lie_within_its_bounds(at_us):
    first, last = ids.first_session_id(at_us), ids.last_session_id(at_us)
    assert ids.is_session_id(first) and ids.is_session_id(last)
    assert at_us == 0 or ids.last_session_id(at_us - 1) < first
    assert last < ids.first_session_id(at_us + 1)
    for _ in range(200):
        assert first <= ids.new_session_id(at_us) <= last


def test_bounds_beyond_the_ids_range_are_clamped():
    assert ids.first_session_id(-5) == ids.first_session_id(0)
    assert ids.last_session_id(2**60) == ids.last_session_id(2**56 - 1)
