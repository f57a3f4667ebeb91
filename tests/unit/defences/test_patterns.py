from __future__ import annotations

import pytest

from proxy.defences.patterns import KeyPatterns


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("user:*", [b"user:", b"user:1:x"], [b"use", b"xuser:1"]),
        ("h?llo", [b"hello", b"hallo"], [b"hllo", b"heello"]),
        ("h[ae]llo", [b"hello", b"hallo"], [b"hillo"]),
        ("h[^e]llo", [b"hallo"], [b"hello"]),
        ("h[a-c]t", [b"hbt"], [b"hdt"]),
        ("a\\*b", [b"a*b"], [b"axb"]),
        ("x[", [b"x["], [b"x"]),
        ("dots.+(", [b"dots.+("], [b"dotsa+("]),
    ],
)
def test_globs_read_as_redis_keys_patterns(pattern: str, yes: list[bytes], no: list[bytes]) -> None:
    match = KeyPatterns([pattern])
    assert all(match(k) for k in yes) and not any(match(k) for k in no)


def test_no_patterns_match_nothing() -> None:
    assert not KeyPatterns([])(b"anything")
    assert KeyPatterns(["a*", "b*"])(b"b1")
