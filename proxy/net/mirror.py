"""A blocking pop during a double-writing migration phase, applied to the other side too.

A blocking call runs on the read side's owner only. When it popped something from a key whose
owner changes, and the phase writes both pools, the equivalent non-blocking command goes to the
key's other owner, as a secondary write (RESP2 connection 0; errors counted and queued for repair
like any double-write error; a pop answered while the backfill copies the key is not mirrored:
the key is copied again after, see mirror_pop):

    BLPOP / BRPOP  [key, elem]            -> LREM key 1 elem / LREM key -1 elem
    BLMPOP         [key, [elem, ...]]     -> LREM key 1|-1 elem, for each
    BLMOVE / BRPOPLPUSH  elem             -> MULTI, LREM src 1|-1 elem, LPUSH|RPUSH dst elem, EXEC
    BZPOPMIN / BZPOPMAX  [key, member, s] -> ZREM key member (the very member, not the lowest)
    BZMPOP         [key, [[member, s], ...]] -> ZREM key member ...

The very element, not "the first one": a push that reached the other side after the pop ran
(pushes and pops run on different connections) must not be what the mirror removes. Exact when
a list's values are unique (job ids) or pushed at the other end than popped (a queue); a list of
repeated values pushed and popped at one end may keep another copy of an equal value there.

XREADGROUP BLOCK is not mirrored (the entries delivered and the pending list may differ between
sides): it is refused in those phases. XREAD BLOCK only reads: it runs on the read side.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.codec.resp import decode_reply
from proxy.commands.spec import CommandSpec
from proxy.net.dualwrite import send_secondary, send_secondary_block
from proxy.net.fence import MigrationState
from proxy.routing.plan import Fragment, Plan

_LREM_COUNT = {b"LEFT": b"1", b"RIGHT": b"-1"}  # the first occurrence from that end
_LIST_END = {"blpop": b"LEFT", "brpop": b"RIGHT"}
_PUSH = {b"LEFT": b"LPUSH", b"RIGHT": b"RPUSH"}
_ZPOP = frozenset({"bzpopmin", "bzpopmax"})
_MIRRORED = frozenset({*_LIST_END, *_ZPOP, "blmpop", "bzmpop", "blmove", "brpoplpush"})


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


def mirror_command(spec: CommandSpec, args: list[bytes], value: object) -> list[list[bytes]]:
    """The commands that remove on the other side what the call returned (the call's decoded
    reply), the very elements: [] when nothing was popped (a timeout)."""
    name = spec.name
    if value is None:
        return []
    if name in ("blmove", "brpoplpush"):
        if not isinstance(value, bytes):
            return []
        src, dst = args[1], args[2]
        wherefrom, whereto = (
            (args[3].upper(), args[4].upper())
            if name == "blmove"
            else (
                b"RIGHT",
                b"LEFT",
            )
        )
        return [[b"LREM", src, _LREM_COUNT[wherefrom], value], [_PUSH[whereto], dst, value]]
    if not isinstance(value, list) or len(value) < 2 or not isinstance(value[0], bytes):
        return []
    key = value[0]
    if name in _LIST_END:
        return [[b"LREM", key, _LREM_COUNT[_LIST_END[name]], value[1]]]
    if name in _ZPOP:
        return [[b"ZREM", key, value[1]]] if isinstance(value[1], bytes) else []
    items = value[1]
    if isinstance(items, dict):  # RESP3 may give member -> score
        items = list(items)
    if not isinstance(items, list) or not items:
        return []
    if name == "blmpop":
        numkeys = int(args[2])
        count = _LREM_COUNT[args[3 + numkeys].upper()]
        return [[b"LREM", key, count, e] for e in items if isinstance(e, bytes)]
    if name == "bzmpop":
        members = [m[0] if isinstance(m, list) else m for m in items]
        return [[b"ZREM", key, *(m for m in members if isinstance(m, bytes))]]
    return []


def mirror_pop(popped: Popped, reply: bytes, direct: bool = False) -> None:
    """Apply the call's pop on the key's other owners in the route table in use now: both
    pools' during a migration, else the owner if the call ran elsewhere (it began before the
    migration ended). `direct`: the call's own keys are held (blocking.py), send at once."""
    state = popped.state
    routes = state.current()
    spec, args = popped.spec, popped.args
    if routes.fast and routes.read.addr_for(args[spec.key_positions(args)[0]]) == popped.addr:
        return  # no migration: the common case, nothing decoded
    commands = mirror_command(spec, args, decode_reply(reply))
    if not commands:
        return
    key = commands[0][1]
    owners = {routes.read.addr_for(key)}
    if routes.secondary_writes:
        owners.add(routes.other.addr_for(key))
    owners.discard(popped.addr)
    if not owners:
        return  # the same server in both rings: popped once
    (addr,) = owners
    keys = tuple(dict.fromkeys(c[1] for c in commands))

    def send() -> None:
        db = popped.db
        if len(commands) == 1:
            send_secondary(Plan((Fragment(addr, commands[0]),), None), keys, routes, state, db)
        else:  # one block: nothing comes between the removal and the push
            block = [[b"MULTI"], *commands, [b"EXEC"]]
            send_secondary_block(addr, block, keys, routes, state, db)

    held = None if direct else state.held_key(keys)
    if held is not None:
        # Popped while the key is being copied: the call ran on its own connection, which the
        # copy's barrier cannot wait for (it may block for ever), so whether the pop came before
        # or after the copy's DUMP is unknown, and mirroring it could pop twice. The key is
        # copied again once this copy is done (the repair worker), which is right either way.
        state.held[held].append(lambda: state.queue_repair(keys, popped.db))
    else:
        send()
