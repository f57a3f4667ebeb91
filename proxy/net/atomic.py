"""Changes made on every backend, all or nothing: FUNCTION LOAD, DELETE and RESTORE, and
CONFIG SET of the parameters `allow_config_set` names.

Every backend of the fleet (both pools during a migration) must hold the same libraries and
settings, or an FCALL (or a keyspace notification) works on some keys and not on others. So a
change is made everywhere or nowhere: each backend's state is read first (FUNCTION DUMP, CONFIG
GET of the parameters); the change is sent to all; if any backend refused it (or is down), the
backends that took it get their state back (FUNCTION RESTORE ... FLUSH, CONFIG SET of the old
values) and the client gets the refusal. Changes through one proxy process run one at a time, so
one change's undo never erases another's.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase

from proxy import errors
from proxy.codec.resp import decode_reply, is_error
from proxy.commands.spec import CommandSpec
from proxy.net.backend import Backend
from proxy.net.route import RouteTable
from proxy.net.slot import Slot
from proxy.routing.plan import plan

log = logging.getLogger("shardproxy.atomic")

_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)
_running: set[asyncio.Task[None]] = set()
# How to read a backend's state before a change, and the request that puts it back.
Snapshot = list[bytes]
Undo = Callable[[bytes], list[bytes]]


def change_everywhere(
    spec: CommandSpec, args: list[bytes], slot: Slot, routes: RouteTable, config_set: Sequence[str]
) -> AtomicChange | bytes:
    """The change on every backend the planner names (its reply lands in `slot`), or the
    refusal to answer. `config_set`: the globs of allow_config_set."""
    snapshot: Snapshot
    undo: Undo
    if spec.name == "config|set":
        refused = _config_refusal(args, config_set)
        if refused is not None:
            return refused
        snapshot, undo = [b"CONFIG", b"GET", *args[2::2]], _config_undo
    else:
        snapshot, undo = [b"FUNCTION", b"DUMP"], _function_undo
    primary = plan(spec, args, routes).primary
    if primary.error is not None:
        return primary.error
    backends = [routes.backends[f.addr] for f in primary.fragments]
    return AtomicChange(backends, args, snapshot, undo, slot)


class AtomicChange:
    """One change, held by its client like a blocking call (net/blocking.HeldCall): it starts
    once every earlier request of the client is answered, and later ones wait for its reply, so
    FUNCTION LOAD then FCALL (or CONFIG SET then a command) run in the client's order."""

    def __init__(
        self,
        backends: Sequence[Backend],
        args: list[bytes],
        snapshot: Snapshot,
        undo: Undo,
        slot: Slot,
    ) -> None:
        self.slot = slot
        self.on_done: Callable[[], None] | None = None
        self._work = (backends, args, snapshot, undo)
        self._started = False

    def at_head(self) -> None:
        if self._started:
            return
        self._started = True
        task = asyncio.get_running_loop().create_task(self._run())
        _running.add(task)
        task.add_done_callback(_running.discard)

    async def _run(self) -> None:
        backends, args, snapshot, undo = self._work
        try:
            await _change(backends, args, snapshot, undo, self.slot)
        finally:
            if self.on_done is not None:
                self.on_done()

    def cancel(self) -> None:
        """The client is gone: the change still completes (or is undone) everywhere."""

    def unblock(self, error: bool) -> bool:
        return False  # not a blocked client: CLIENT UNBLOCK does not apply


def _config_refusal(args: list[bytes], allowed: Sequence[str]) -> bytes | None:
    if not allowed:
        return errors.denied("config|set")
    for name in args[2::2]:
        text = name.decode(errors="replace").lower()
        if not any(fnmatchcase(text, glob) for glob in allowed):
            return errors.config_set_not_allowed(text)
    return None


def _lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _locks.get(loop)
    if lock is None:
        lock = _locks[loop] = asyncio.Lock()
    return lock


async def _change(
    backends: Sequence[Backend], args: list[bytes], snapshot: Snapshot, undo: Undo, slot: Slot
) -> None:
    async with _lock():
        states = await asyncio.gather(*(b.call(snapshot) for b in backends))
        refused = next((d for d in states if is_error(d)), None)
        if refused is not None:  # a backend down or refusing to tell: change nothing
            slot.answer(refused)
            return
        replies = await asyncio.gather(*(b.call(args) for b in backends))
        refused = next((r for r in replies if is_error(r)), None)
        if refused is None:
            slot.answer(replies[0])
            return
        took = [
            (b, s) for b, s, r in zip(backends, states, replies, strict=True) if not is_error(r)
        ]
        await _undo(took, undo)
        slot.answer(refused)


async def _undo(took: list[tuple[Backend, bytes]], undo: Undo) -> None:
    """Give the backends that took a change their state as it was before it."""
    undone = await asyncio.gather(*(b.call(undo(state)) for b, state in took))
    for (backend, _), reply in zip(took, undone, strict=True):
        if is_error(reply):
            log.error(
                "a change refused elsewhere could not be undone on %s: %s; its functions or "
                "settings now differ from the other backends'",
                backend.name,
                reply[:200].decode(errors="replace").strip(),
            )


def _function_undo(dump: bytes) -> list[bytes]:
    value = decode_reply(dump)
    return [b"FUNCTION", b"RESTORE", value if isinstance(value, bytes) else b"", b"FLUSH"]


def _config_undo(got: bytes) -> list[bytes]:
    """CONFIG SET of every parameter and value a CONFIG GET answered."""
    value = decode_reply(got)
    pairs: list[bytes] = []
    if isinstance(value, dict):
        for k, v in value.items():
            pairs += [k, v]
    elif isinstance(value, list):
        pairs = [v for v in value if isinstance(v, bytes)]
    return [b"CONFIG", b"SET", *pairs]
