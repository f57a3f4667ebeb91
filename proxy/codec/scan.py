"""The compiled build's byte scans: the request and reply fast paths that read RESP headers digit
by digit (C integer work when compiled: i64), instead of splitting the read on CRLF as the pure
build does (faster in Python). codec/request and codec/resp choose by COMPILED; each pair is
tested to give the same results on random and edge-case input (tests/unit/codec).
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # only types: mypyc compiles i64 to a C int64_t, and nothing imports it
    from mypy_extensions import i64

# This module runs compiled (mypyc) when the codec does: they are built together.
COMPILED: Final = __file__.endswith(tuple(EXTENSION_SUFFIXES))


def read_digits(data: bytes, start: i64, n: i64, most: i64) -> tuple[i64, i64]:
    """The decimal digits at data[start:n], at most `most` of them: (their value, where they
    stop). For the compiled build's scans (an unboxed pair there); 0 digits: (0, start)."""
    value: i64 = 0
    i = start
    while i < n:
        c: i64 = data[i]
        if c < 48 or c > 57 or i - start >= most:
            break
        value = value * 10 + c - 48
        i += 1
    return value, i


def take_replies(data: bytes, max_value: i64) -> tuple[list[bytes], int]:
    """codec/resp._split_replies's fast path for the compiled build: the same replies, taken
    by reading bulk headers' digits rather than by splitting, so no object is made but the
    replies (none when the read is one reply). Stops at anything but a one-line reply or a
    bulk string of under `max_value` bytes, or at a partial one."""
    n: i64 = len(data)
    out: list[bytes] = []
    pos: i64 = 0
    while pos < n:
        t: i64 = data[pos]
        i: i64 = pos + 1
        if t == 36:  # $
            if i < n and data[i] == 45:  # $-1: nil
                end = pos + 5
                if end > n or data[i + 1] != 49 or data[i + 2] != 13 or data[i + 3] != 10:
                    break
            else:
                size, i = read_digits(data, i, n, 6)
                end = i + 4 + size
                if i == pos + 1 or size >= max_value or end > n or data[i] != 13:
                    break
        elif t == 43 or t == 58 or t == 45:  # + : -
            while i < n and data[i] != 13:
                i += 1
            end = i + 2
            if end > n:
                break
        else:
            break
        out.append(data if pos == 0 and end == n else data[pos:end])
        pos = end
    return out, pos


def scan_requests(
    data: bytes, out: list[list[bytes]], raws: list[bytes], max_count: i64, max_value: i64
) -> int:
    """codec/request._parse_simple for the compiled build: the same requests, taken by reading
    the headers' digits rather than by splitting: no object is made but the arguments, their
    list and, for a read holding more than one request, each one's bytes. Stops, returning
    where, at anything but a whole canonical request of at most `max_count` arguments, each
    under `max_value` bytes (the careful parser decides about the rest)."""
    n: i64 = len(data)
    pos: i64 = 0
    while pos < n:
        if data[pos] != 42:  # not '*'
            return pos
        count, i = read_digits(data, pos + 1, n, 8)
        digits = i - pos - 1
        if (
            digits == 0
            or digits > 7
            or data[pos + 1] == 48  # *0 or a leading zero
            or count > max_count
            or i + 1 >= n
            or data[i] != 13
            or data[i + 1] != 10
        ):
            return pos
        i += 2
        args: list[bytes] = []
        while count:
            if i >= n or data[i] != 36:  # not '$'
                return pos
            size, j = read_digits(data, i + 1, n, 8)
            digits = j - i - 1
            if (
                digits == 0
                or (digits > 1 and data[i + 1] == 48)  # a leading zero
                or size >= max_value
                or j + 1 >= n
                or data[j] != 13
                or data[j + 1] != 10
            ):
                return pos
            end = j + 2 + size
            if end + 2 > n or data[end] != 13 or data[end + 1] != 10:
                return pos
            args.append(data[j + 2 : end])
            i = end + 2
            count -= 1
        out.append(args)
        raws.append(data if pos == 0 and i == n else data[pos:i])
        pos = i
    return pos
