"""Strict request bodies: JSON objects only, no duplicate keys, no NaN, nothing odd."""

from __future__ import annotations

import pytest

from worker.api.body import parse_json_object
from worker.api.errors import ApiError


def test_a_plain_object_passes() -> None:
    assert parse_json_object(b'{"a": {"b": [1, 2.5, "x", null, true]}}') == {
        "a": {"b": [1, 2.5, "x", None, True]}
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty"),
        (b"  \n", "empty"),
        (b"{", "not valid JSON"),
        (b'{"a": 1} {"b": 2}', "Extra data"),
        (b'{"a": 1, "a": 2}', "'a' appears twice"),
        (b'{"x": {"a": 1, "a": 1}}', "'a' appears twice"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": Infinity}', "Infinity"),
        (b'{"a": -Infinity}', "Infinity"),
        (b'{"a": ' + b"1" * 5000 + b"}", "not valid JSON"),
        (b'{"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "nests too deeply"),
        (b"[]", "not an array"),
        (b"null", "not null"),
        (b"3", "not a number"),
        (b"true", "not a boolean"),
        (b'"{}"', "not a string"),
        (b"\xc3\x28", "not UTF-8"),
    ],
)
def test_anything_else_is_a_400_saying_why(raw: bytes, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_json_object(raw)
    assert caught.value.status == 400 and caught.value.code == "invalid_json"
    assert message in caught.value.message
