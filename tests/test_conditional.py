"""conditional: entity tags parsed and compared as RFC 9110 says, without an app."""

import pytest

from sessions_app.conditional import Tags, etag, parse_tags


def test_a_tag_is_the_version_in_quotes():
    assert etag(7) == '"7"'


@pytest.mark.parametrize(
    ("header", "tags"),
    [
        ("*", Tags(any=True)),
        (" * ", Tags(any=True)),
        ('"1"', Tags(strong=frozenset({"1"}))),
        ('W/"1"', Tags(weak=frozenset({"1"}))),
        ('"1", W/"2",\t"3"', Tags(strong=frozenset({"1", "3"}), weak=frozenset({"2"}))),
        ('"1",,"2"', Tags(strong=frozenset({"1", "2"}))),
        (', "1",', Tags(strong=frozenset({"1"}))),
        ('"a,b"', Tags(strong=frozenset({"a,b"}))),
        ('""', Tags(strong=frozenset({""}))),
    ],
)
def test_well_formed_headers(header, tags):
    assert parse_tags(header) == tags


@pytest.mark.parametrize(
    "header",
    ["", " ", ",", "1", '"1', '1"', "W/1", 'w/"1"', '"1" "2"', '*, "1"', "**", '"a"b"', "'1'"],
)
def test_malformed_headers(header):
    with pytest.raises(ValueError):
        parse_tags(header)


def test_if_match_compares_strongly():
    assert parse_tags('"2"').match_strongly(2)
    assert not parse_tags('W/"2"').match_strongly(2)
    assert not parse_tags('"02"').match_strongly(2)
    assert parse_tags('"1", "2"').match_strongly(2)
    assert parse_tags("*").match_strongly(2)


def test_if_none_match_compares_weakly():
    assert parse_tags('W/"2"').match_weakly(2)
    assert parse_tags('"2"').match_weakly(2)
    assert not parse_tags('"3", W/"1"').match_weakly(2)
    assert parse_tags("*").match_weakly(2)
