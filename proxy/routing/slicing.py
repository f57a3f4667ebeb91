"""Slicing, pure: a huge multi-key request as slices of a bounded number of keys, and the fold
of the slices' replies, in slice order, into the one reply the whole request would have had.

Each slice is a request of its own (MGET k1..kn); its reply, already merged in its keys' order,
is folded as it comes, so no step of the merge costs more than one slice's worth of work.
"""

from __future__ import annotations

from proxy.codec.resp import OK, encode_int, is_error
from proxy.commands.checks import RESERVED_PREFIX
from proxy.commands.spec import CommandSpec, Merge


def slice_count(spec: CommandSpec, args: list[bytes], keys_per_slice: int) -> int:
    nkeys = (len(args) - 1) // spec.key_step
    return -(-nkeys // keys_per_slice)


def slice_args(
    spec: CommandSpec, args: list[bytes], index: int, keys_per_slice: int
) -> list[bytes]:
    """Slice `index`: the command name and its share of the keys (with their values)."""
    width = keys_per_slice * spec.key_step
    start = 1 + index * width
    return [args[0], *args[start : start + width]]


def names_reserved(spec: CommandSpec, args: list[bytes]) -> bool:
    """Does a slice (from slice_args) name a key under RESERVED_PREFIX?"""
    return any(key.startswith(RESERVED_PREFIX) for key in args[1 :: spec.key_step])


class SliceMerge:
    """The replies of a sliced MGET/MSET/DEL/UNLINK/EXISTS/TOUCH, added in slice order."""

    __slots__ = ("count", "error", "merge", "parts", "total")

    def __init__(self, merge: Merge | None) -> None:
        self.merge = merge
        self.error: bytes | None = None  # the first error wins, as in routing.merge_replies
        self.count = 0  # VALUES: elements so far
        self.parts: list[memoryview] = []  # VALUES: each slice's elements, without its header
        self.total = 0  # SUM

    def add(self, raw: bytes) -> None:
        if self.error is not None:
            return
        if is_error(raw):
            self.error = raw
            self.parts.clear()
            return
        merge = self.merge
        if merge is Merge.VALUES:
            eol = raw.index(b"\r\n")
            self.count += int(raw[1:eol])
            self.parts.append(memoryview(raw)[eol + 2 :])
        elif merge is Merge.SUM:
            self.total += int(raw[1:-2]) if raw[:1] == b":" else 0

    def reply(self) -> bytes:
        if self.error is not None:
            return self.error
        merge = self.merge
        if merge is Merge.VALUES:
            parts, self.parts = self.parts, []
            return b"".join([b"*%d\r\n" % self.count, *parts])
        if merge is Merge.SUM:
            return encode_int(self.total)
        return OK
