"""FUNCTION LOAD, DELETE and RESTORE on every backend, all or nothing.

Every backend of the fleet (both pools during a migration) must hold the same libraries, or an
FCALL works on some keys and not on others. So a change is made everywhere or nowhere: each
backend's libraries are dumped first; the change is sent to all; if any backend refused it (or
is down), the backends that took it get their dump back (FUNCTION RESTORE ... FLUSH) and the
client gets the refusal. Changes through one proxy process run one at a time, so one change's
undo never erases another's.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Sequence

from proxy.codec.resp import decode_reply, is_error
from proxy.commands.spec import CommandSpec
from proxy.net.backend import Backend
from proxy.net.route import RouteTable
from proxy.net.slot import Slot
from proxy.routing.plan import plan

log = logging.getLogger("shardproxy.functions")

_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)
_running: set[asyncio.Task[None]] = set()


def change_functions(
    spec: CommandSpec, args: list[bytes], slot: Slot, routes: RouteTable
) -> bytes | None:
    """Start the change on every backend the planner names; its reply lands in `slot`."""
    primary = plan(spec, args, routes).primary
    if primary.error is not None:
        return primary.error
    backends = [routes.backends[f.addr] for f in primary.fragments]
    task = asyncio.get_running_loop().create_task(_change(backends, args, slot))
    _running.add(task)
    task.add_done_callback(_running.discard)
    return None


def _lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _locks.get(loop)
    if lock is None:
        lock = _locks[loop] = asyncio.Lock()
    return lock


async def _change(backends: Sequence[Backend], args: list[bytes], slot: Slot) -> None:
    async with _lock():
        dumps = await asyncio.gather(*(b.call([b"FUNCTION", b"DUMP"]) for b in backends))
        refused = next((d for d in dumps if is_error(d)), None)
        if refused is not None:  # a backend down or refusing DUMP: change nothing
            slot.answer(refused)
            return
        replies = await asyncio.gather(*(b.call(args) for b in backends))
        refused = next((r for r in replies if is_error(r)), None)
        if refused is None:
            slot.answer(replies[0])
            return
        took = [(b, d) for b, d, r in zip(backends, dumps, replies, strict=True) if not is_error(r)]
        await _undo(took)
        slot.answer(refused)


async def _undo(took: list[tuple[Backend, bytes]]) -> None:
    """Give the backends that took a change their libraries as they were before it."""
    undone = await asyncio.gather(
        *(b.call([b"FUNCTION", b"RESTORE", _payload(d), b"FLUSH"]) for b, d in took)
    )
    for (backend, _), reply in zip(took, undone, strict=True):
        if is_error(reply):
            log.error(
                "FUNCTION change refused elsewhere, and undoing it on %s failed: %s; its "
                "libraries now differ from the other backends'",
                backend.name,
                reply[:200].decode(errors="replace").strip(),
            )


def _payload(dump: bytes) -> bytes:
    value = decode_reply(dump)
    return value if isinstance(value, bytes) else b""
