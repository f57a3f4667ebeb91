"""Copying a big key in chunks instead of one DUMP, so neither Redis blocks on a huge payload.

Under the fence, the key is snapshotted on the source with COPY (atomic, and ordered with client
writes on connection 0 exactly like copy_key's DUMP), the snapshot is streamed in chunks by type
(HSCAN/SSCAN/ZSCAN/LRANGE/GETRANGE) into a temporary key on the target, which then replaces the key
with one RENAME; the fence is released right after the RENAME is sent. Streams, and types this
module does not know, are copied from the snapshot with one DUMP. Temporary keys carry the reserved
prefix (jobs never touch them) and a one-hour TTL, so a crash mid-copy leaves no permanent garbage.
"""

from __future__ import annotations

import secrets
import time
from typing import Final

from proxy.jobs.executor import CopyOutcome, Executor, Fence, JobError, parse, request
from proxy.migration.keys import RESERVED_PREFIX

__all__ = ["CHUNK_BYTES", "CHUNK_ITEMS", "copy_big_key"]

CHUNK_ITEMS: Final = 1000  # elements per HSCAN/SSCAN/ZSCAN/LRANGE chunk
CHUNK_BYTES: Final = 1 << 20  # bytes per GETRANGE chunk of a string
TEMP_TTL_MS: Final = b"3600000"  # temporary keys expire after an hour if a copy dies mid-way

_SCANS: Final = {
    b"hash": (b"HSCAN", b"HSET"),
    b"set": (b"SSCAN", b"SADD"),
    b"zset": (b"ZSCAN", b"ZADD"),
}


def _temp_key() -> bytes:
    return RESERVED_PREFIX + b"tmp:" + secrets.token_hex(8).encode()


async def copy_big_key(ex: Executor, fence: Fence, key: bytes, src: str, dst: str) -> CopyOutcome:
    """Like copy_key, streaming the value in chunks."""
    snap, temp = _temp_key(), _temp_key()
    await fence.hold(key)
    released = False
    try:
        type_f = ex.call(src, [b"TYPE", key])
        copy_f = ex.call(src, [b"COPY", key, snap])
        pttl_f = ex.call(src, [b"PTTL", key])
        ex.call(src, [b"PEXPIRE", snap, TEMP_TTL_MS])
        kind, copied, pttl = (
            parse(await type_f, src),
            parse(await copy_f, src),
            parse(await pttl_f, src),
        )
        started = time.monotonic()
        assert isinstance(kind, bytes) and isinstance(pttl, int)
        if copied != 1 or pttl == -2:
            last = ex.call(dst, [b"DEL", key])
            fence.release(key)
            released = True
            parse(await last, dst)
            return CopyOutcome.SKIPPED
        await _stream(ex, kind, snap, src, temp, dst)
        if pttl >= 0:
            left = max(1, pttl - int((time.monotonic() - started) * 1000))
            ex.call(dst, [b"PEXPIRE", temp, b"%d" % left])
        else:
            ex.call(dst, [b"PERSIST", temp])
        last = ex.call(dst, [b"RENAME", temp, key])
        fence.release(key)
        released = True
        parse(await last, dst)
        return CopyOutcome.COPIED
    except JobError:
        ex.call(dst, [b"UNLINK", temp])
        return CopyOutcome.FAILED
    finally:
        if not released:
            fence.release(key)
        ex.call(src, [b"UNLINK", snap])


async def _stream(ex: Executor, kind: bytes, snap: bytes, src: str, temp: bytes, dst: str) -> None:
    """Fill `temp` on dst from the snapshot on src, chunk by chunk (the snapshot never changes)."""
    if kind in _SCANS:
        await _stream_scan(ex, kind, snap, src, temp, dst)
    elif kind == b"list":
        await _stream_ranges(ex, b"LRANGE", b"RPUSH", snap, src, temp, dst, CHUNK_ITEMS)
    elif kind == b"string":
        await _stream_ranges(ex, b"GETRANGE", b"APPEND", snap, src, temp, dst, CHUNK_BYTES)
    else:  # stream (consumer groups, ids) or a module type: one DUMP of the snapshot
        payload = await request(ex, src, b"DUMP", snap)
        assert isinstance(payload, bytes)
        await _write(ex, dst, temp, b"RESTORE", temp, b"0", payload, b"REPLACE")


async def _write(ex: Executor, dst: str, temp: bytes, *args: bytes) -> None:
    """One write into the temporary key, which keeps a safety TTL until the final RENAME."""
    write_f = ex.call(dst, list(args))
    ttl_f = ex.call(dst, [b"PEXPIRE", temp, TEMP_TTL_MS])
    parse(await write_f, dst)
    parse(await ttl_f, dst)


async def _stream_scan(
    ex: Executor, kind: bytes, snap: bytes, src: str, temp: bytes, dst: str
) -> None:
    scan, write = _SCANS[kind]
    cursor = b"0"
    while True:
        reply = await request(ex, src, scan, snap, cursor, b"COUNT", b"%d" % CHUNK_ITEMS)
        assert isinstance(reply, list)
        cursor, items = reply
        if items:
            if kind == b"zset":  # ZSCAN gives member, score; ZADD takes score, member
                items = [x for pair in zip(items[1::2], items[::2], strict=True) for x in pair]
            await _write(ex, dst, temp, write, temp, *items)
        if cursor == b"0":
            return


async def _stream_ranges(
    ex: Executor,
    read: bytes,
    write: bytes,
    snap: bytes,
    src: str,
    temp: bytes,
    dst: str,
    step: int,
) -> None:
    start = 0
    while True:
        chunk = await request(ex, src, read, snap, b"%d" % start, b"%d" % (start + step - 1))
        if not chunk:
            return
        if isinstance(chunk, list):
            await _write(ex, dst, temp, write, temp, *chunk)
            count = len(chunk)
        else:
            assert isinstance(chunk, bytes)
            await _write(ex, dst, temp, write, temp, chunk)
            count = len(chunk)
        if count < step:
            return
        start += step
