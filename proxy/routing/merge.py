"""Merging the raw replies of a plan's fragments into the one reply the client gets, pure.

Multi-key replies come back in the client's key order; counts are summed; KEYS and SCAN pages
never show the proxy's reserved keys (a SCAN page may get shorter, even empty, with a cursor
that goes on); the first error wins, as a failed single command would.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from proxy import errors
from proxy.codec.resp import (
    OK,
    encode_array_raw,
    encode_int,
    encode_map_raw,
    encode_null,
    parse_int_reply,
    split_aggregate,
)
from proxy.commands.checks import RESERVED_PREFIX
from proxy.commands.spec import Merge
from proxy.routing.plan import Plan


def merge_replies(plan: Plan, replies: Sequence[bytes], resp3: bool) -> bytes:
    """Combine the raw replies of `plan`'s fragments (same order) into the client's reply."""
    merge = plan.merge
    if merge is None:
        return replies[0]
    if merge is Merge.KILL:
        return _merge_kill(replies)
    if merge is Merge.RANDOM:
        return _merge_random(replies, resp3)
    for raw in replies:
        if raw[:1] in (b"-", b"!"):
            return raw  # the first error wins, as a failed single command would
    if merge is Merge.SUM:
        return encode_int(sum(parse_int_reply(r) or 0 for r in replies))
    if merge is Merge.OK:
        return OK
    if merge is Merge.FIRST:
        return replies[0]
    if merge is Merge.VALUES:
        return _merge_values(plan, replies)
    if merge is Merge.CONCAT:
        items: list[bytes] = []
        for raw in replies:
            items.extend(split_aggregate(raw) or ())
        return encode_array_raw(_visible(items) if RESERVED_PREFIX in b"".join(items) else items)
    if merge is Merge.ALL:
        return _merge_all(replies)
    if merge is Merge.SCAN:
        return _merge_scan(plan, replies[0])
    if merge is Merge.CONFIG:
        return _merge_config(replies, resp3)
    if merge is Merge.LIBRARIES:
        return _merge_libraries(replies)
    raise AssertionError(f"unhandled merge {merge}")


def _merge_random(replies: Sequence[bytes], resp3: bool) -> bytes:
    """RANDOMKEY: a key from a backend chosen at random among those that answered one (an
    error only when no backend did); nil when every backend is empty."""
    keys = [r for r in replies if r[:1] == b"$" and r != b"$-1\r\n" and not _reserved(r)]
    if keys:
        return random.choice(keys)
    for raw in replies:
        if raw[:1] in (b"-", b"!"):
            return raw
    return encode_null(resp3)


def _reserved(bulk: bytes) -> bool:
    return bulk[bulk.find(b"\n") + 1 :].startswith(RESERVED_PREFIX)


# CONFIG GET never shows these: the backends' secrets are not the clients' to read.
SECRET_PARAMETERS = frozenset(
    {
        b"requirepass",
        b"masterauth",
        b"masteruser",
        b"tls-key-file-pass",
        b"tls-client-key-file-pass",
    }
)


def _merge_config(replies: Sequence[bytes], resp3: bool) -> bytes:
    """CONFIG GET: every parameter any backend named, once, with the first backend's value
    (backends of one fleet are expected to agree); secrets left out."""
    merged: dict[bytes, tuple[bytes, bytes]] = {}
    for raw in replies:
        items = split_aggregate(raw) or []
        for name, value in zip(items[::2], items[1::2], strict=True):
            text = name[name.find(b"\n") + 1 : -2]
            if text not in merged and text not in SECRET_PARAMETERS:
                merged[text] = (name, value)
    return encode_map_raw(merged.values(), len(merged), resp3)


def _merge_libraries(replies: Sequence[bytes]) -> bytes:
    """FUNCTION LIST: each library once, by name, in the order the backends list them."""
    libraries: dict[bytes, bytes] = {}
    for raw in replies:
        for library in split_aggregate(raw) or []:
            fields = split_aggregate(library) or []
            name = next(
                (
                    v
                    for k, v in zip(fields[::2], fields[1::2], strict=True)
                    if k.endswith(b"library_name\r\n")
                ),
                library,
            )
            libraries.setdefault(name, library)
    return encode_array_raw(list(libraries.values()))


def _merge_kill(replies: Sequence[bytes]) -> bytes:
    """+OK when any backend stopped its script; else the first error other than NOTBUSY (a
    -BUSY naming the other KILL, -UNKILLABLE, a backend unavailable), as one Redis would
    answer; else Redis's -NOTBUSY."""
    if any(raw[:1] == b"+" for raw in replies):
        return OK
    for raw in replies:
        if not raw.startswith(b"-NOTBUSY"):
            return raw
    return errors.notbusy()


def _merge_values(plan: Plan, replies: Sequence[bytes]) -> bytes:
    values: list[bytes] = [b""] * plan.nkeys
    for fragment, raw in zip(plan.fragments, replies, strict=True):
        elements = split_aggregate(raw) or []
        for pos, element in zip(fragment.positions, elements, strict=True):
            values[pos] = element
    return encode_array_raw(values)


def _merge_all(replies: Sequence[bytes]) -> bytes:
    columns = [split_aggregate(r) or [] for r in replies]
    merged = [
        encode_int(int(all(parse_int_reply(e) for e in row))) for row in zip(*columns, strict=True)
    ]
    return encode_array_raw(merged)


def _merge_scan(plan: Plan, raw: bytes) -> bytes:
    parts = split_aggregate(raw)
    if parts is None or len(parts) != 2:
        return raw
    head, keys = parts
    backend_cursor = int(head[head.index(b"\r\n") + 2 : -2])
    index, count = plan.scan_index, plan.scan_count
    if backend_cursor:
        cursor = backend_cursor * count + index
    else:
        cursor = index + 1 if index + 1 < count else 0
    text = b"%d" % cursor
    if RESERVED_PREFIX in keys:  # rare: split only then (a page may get shorter, or empty)
        keys = encode_array_raw(_visible(split_aggregate(keys) or []))
    return b"*2\r\n$%d\r\n%s\r\n" % (len(text), text) + keys


def _visible(items: list[bytes]) -> list[bytes]:
    """KEYS and SCAN elements (raw bulk strings) without the proxy's reserved keys."""
    return [i for i in items if not i[i.index(b"\r\n") + 2 :].startswith(RESERVED_PREFIX)]
