from __future__ import annotations

import pytest

from proxy.defences.jitter import extend_ms, jitter_args


def test_extend_is_never_shorter_and_at_most_percent_longer() -> None:
    assert extend_ms(1000, 10, 0.0) == 1000
    assert extend_ms(1000, 10, 0.999999) == 1099
    assert extend_ms(1000, 0, 0.9) == 1000


@pytest.mark.parametrize(
    ("args", "out"),
    [
        ([b"SET", b"k", b"v", b"EX", b"10"], [b"SET", b"k", b"v", b"PX", b"15000"]),
        ([b"SET", b"k", b"v", b"nx", b"px", b"100"], [b"SET", b"k", b"v", b"nx", b"PX", b"150"]),
        ([b"SETEX", b"k", b"10", b"v"], [b"PSETEX", b"k", b"15000", b"v"]),
        ([b"PSETEX", b"k", b"100", b"v"], [b"PSETEX", b"k", b"150", b"v"]),
        ([b"GETEX", b"k", b"EX", b"2"], [b"GETEX", b"k", b"PX", b"3000"]),
        ([b"EXPIRE", b"k", b"10", b"NX"], [b"PEXPIRE", b"k", b"15000", b"NX"]),
        ([b"PEXPIRE", b"k", b"10"], [b"PEXPIRE", b"k", b"15"]),
    ],
)
def test_relative_ttls_are_jittered_in_milliseconds(args: list[bytes], out: list[bytes]) -> None:
    name = args[0].decode().lower()
    assert jitter_args(name, args, 100.0, 0.5) == out


@pytest.mark.parametrize(
    "args",
    [
        [b"SET", b"k", b"v"],
        [b"SET", b"k", b"v", b"EXAT", b"99999999999"],
        [b"SET", b"k", b"v", b"PXAT", b"99999999999"],
        [b"SET", b"k", b"v", b"KEEPTTL"],
        [b"SET", b"k", b"EX", b"v"],  # the value is "EX": no option follows
        [b"SET", b"k", b"v", b"EX", b"-5"],  # Redis's error, not ours
        [b"SET", b"k", b"v", b"EX", b"abc"],
        [b"EXPIRE", b"k", b"10", b"GT"],
        [b"EXPIRE", b"k", b"10", b"lt"],
        [b"EXPIRE", b"k", b"99999999999999"],  # beyond the cap: left alone
        [b"GETEX", b"k", b"PERSIST"],
        [b"EXPIREAT", b"k", b"10"],
    ],
)
def test_absolute_or_invalid_ttls_are_untouched(args: list[bytes]) -> None:
    assert jitter_args(args[0].decode().lower(), args, 100.0, 0.5) is None
