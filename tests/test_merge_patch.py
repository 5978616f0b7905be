"""merge_patch: JSON Merge Patch as RFC 7396 defines it."""

import copy

import pytest
from contract import RFC7396_APPENDIX_A

from sessions_app.merge_patch import merge_patch


@pytest.mark.parametrize(("target", "patch", "result"), RFC7396_APPENDIX_A)
def test_rfc7396_appendix_a(target, patch, result):
    assert merge_patch(target, patch) == result


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [
        ({"a": 1}, {}, {"a": 1}),
        ({}, {}, {}),
        (
            {"a": {"b": {"c": 1, "d": 2}}},
            {"a": {"b": {"c": None, "e": 3}}},
            {"a": {"b": {"d": 2, "e": 3}}},
        ),
        ({"a": 1}, {"missing": None}, {"a": 1}),
        ({"a": [1, 2]}, {"a": []}, {"a": []}),
        ({"a": {"b": 1}}, {"a": {}}, {"a": {"b": 1}}),
        ({"a": 1}, {"a": 1.0}, {"a": 1.0}),
        ({"a": 1}, {"a": True}, {"a": True}),
        ({"a": "x"}, {"a": {"b": None}}, {"a": {}}),
    ],
)
def test_more_merges(target, patch, result):
    merged = merge_patch(target, patch)
    assert merged == result
    assert [type(v) for v in merged.values()] == [type(v) for v in result.values()]


def test_arguments_are_not_changed():
    target = {"a": {"b": {"c": 1}}, "list": [1, 2], "gone": 1}
    patch = {"a": {"b": {"c": 2, "d": None}}, "list": [3], "gone": None, "new": {"x": None}}
    target_before, patch_before = copy.deepcopy(target), copy.deepcopy(patch)
    assert merge_patch(target, patch) == {"a": {"b": {"c": 2}}, "list": [3], "new": {}}
    assert target == target_before
    assert patch == patch_before
