"""A blocking pop during a double-writing migration phase, applied to the other side too.

A blocking call runs on the read side's owner only. When it popped something from a key whose
owner changes, and the phase writes both pools, the equivalent non-blocking command goes to the
key's other owner, as a secondary write (RESP2 connection 0, behind the per-key fence; errors
counted and queued for repair like any double-write error):

    BLPOP / BRPOP  [key, elem]            -> LPOP key / RPOP key
    BLMPOP         [key, [elem, ...]]     -> LPOP|RPOP key n
    BLMOVE / BRPOPLPUSH  elem             -> LMOVE src dst from to / RPOPLPUSH src dst
    BZPOPMIN / BZPOPMAX  [key, member, s] -> ZREM key member (the very member, not the lowest)
    BZMPOP         [key, [[member, s], ...]] -> ZREM key member ...

XREADGROUP BLOCK is not mirrored (the entries delivered and the pending list may differ between
sides): it is refused in those phases. XREAD BLOCK only reads: it runs on the read side.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.codec.resp import decode_reply
from proxy.commands.spec import CommandSpec
from proxy.net.dualwrite import send_secondary
from proxy.net.fence import MigrationState
from proxy.routing.plan import Fragment, Plan

_POP_FIRST = {"blpop": b"LPOP", "brpop": b"RPOP"}
_ZPOP = frozenset({"bzpopmin", "bzpopmax"})
_MIRRORED = frozenset({*_POP_FIRST, *_ZPOP, "blmpop", "bzmpop", "blmove", "brpoplpush"})


def mirrorable(spec: CommandSpec) -> bool:
    """May this blocking command run while writes go to both pools?"""
    return spec.name in _MIRRORED


@dataclass(frozen=True, slots=True)
class Popped:
    """A blocking call during a double-writing phase: what it was and where it ran."""

    spec: CommandSpec
    args: list[bytes]
    addr: str  # the read side's owner, where the call ran
    state: MigrationState
    db: int  # the client's database: the mirrored pop runs there too


def mirror_command(spec: CommandSpec, args: list[bytes], value: object) -> list[bytes] | None:
    """The non-blocking command that removes on the other side what the call returned (the
    call's decoded reply), or None: nothing was popped (a timeout) or nothing to mirror."""
    name = spec.name
    if value is None:
        return None
    if name in ("blmove", "brpoplpush"):
        if name == "brpoplpush":
            return [b"RPOPLPUSH", args[1], args[2]]
        return [b"LMOVE", *args[1:5]]
    if not isinstance(value, list) or len(value) < 2 or not isinstance(value[0], bytes):
        return None
    key = value[0]
    if name in _POP_FIRST:
        return [_POP_FIRST[name], key]
    if name in _ZPOP:
        return [b"ZREM", key, value[1]] if isinstance(value[1], bytes) else None
    items = value[1]
    if isinstance(items, dict):  # RESP3 may give member -> score
        items = list(items)
    if not isinstance(items, list) or not items:
        return None
    if name == "blmpop":
        numkeys = int(args[2])
        direction = b"LPOP" if args[3 + numkeys].upper() == b"LEFT" else b"RPOP"
        return [direction, key, b"%d" % len(items)]
    if name == "bzmpop":
        members = [m[0] if isinstance(m, list) else m for m in items]
        return [b"ZREM", key, *(m for m in members if isinstance(m, bytes))]
    return None


def mirror_pop(popped: Popped, reply: bytes) -> None:
    """Apply the call's pop on the key's other owner (in the route table in use now)."""
    command = mirror_command(popped.spec, popped.args, decode_reply(reply))
    if command is None:
        return
    key = command[1]
    state = popped.state
    routes = state.current()
    if routes.fast or not routes.secondary_writes:
        return
    owners = {routes.read.addr_for(key), routes.other.addr_for(key)} - {popped.addr}
    if not owners:
        return  # the same server in both rings: popped once
    (addr,) = owners
    keys = tuple(command[1:3]) if popped.spec.name in ("blmove", "brpoplpush") else (key,)
    secondary = Plan((Fragment(addr, command),), None)

    def send() -> None:
        send_secondary(secondary, keys, routes, state, popped.db)

    held = state.held_key(keys)
    if held is not None:  # being copied: after the copy, as for any write to it
        state.held[held].append(send)
    else:
        send()
