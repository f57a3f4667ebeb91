"""Routing, pure: where a transaction (the commands queued between MULTI and EXEC) runs.

A transaction runs as one block on one backend: every key of every queued command (and the
channel of a PUBLISH or SPUBLISH, hashed as a key) must map to that backend in the ring that
answers (and, during a phase that writes both pools, the keys of its writes to one backend of the
other ring, which gets the block of its writes), else CROSSSLOT and nothing runs. A PUBLISH is
never part of the other pool's block: during a migration a message is published on the read pool
only (net/pubsub.py). No await, clock or metric here; sending the block is net/transaction.py's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from proxy import errors
from proxy.commands.spec import CommandSpec, Kind
from proxy.routing.plan import RouteView, mutates

Queued = tuple[CommandSpec, list[bytes]]


@dataclass(frozen=True, slots=True)
class TxPlan:
    addr: str  # the backend that runs the block and answers the client
    secondary: str | None  # the other pool's owner of the written keys, when not `addr`
    writes: tuple[int, ...]  # indexes of the queued commands sent to `secondary`
    keys: tuple[bytes, ...]  # every key of the transaction (for the per-key fence)
    error: bytes | None = None  # the reply to EXEC instead of running anything


def _cross() -> TxPlan:
    return TxPlan("", None, (), (), errors.cross_backend("exec"))


def plan_transaction(
    commands: Sequence[Queued], view: RouteView, pinned: str | None, spread: int
) -> TxPlan:
    """The backend of every key of `commands`; `pinned`: the WATCHed backend, which must be it;
    a transaction without keys runs on `pinned`, else on the read pool's backend `spread`
    (modulo its size)."""
    read, other = view.read, view.other
    both = view.secondary_writes
    keys: list[bytes] = []
    write_keys: list[bytes] = []
    writes: list[int] = []
    channels: list[bytes] = []
    for i, (spec, args) in enumerate(commands):
        own = [args[p] for p in spec.key_positions(args)]
        keys.extend(own)
        if spec.kind is Kind.PUBSUB:  # PUBLISH/SPUBLISH: the channel's owner, hashed as a key
            channels.append(args[1])
        if both and mutates(spec) and own:
            writes.append(i)
            write_keys.extend(own)
    owners = {read.addr_for(k) for k in (*keys, *channels)}
    if pinned is not None:
        owners.add(pinned)
    if len(owners) > 1:
        return _cross()
    addr = owners.pop() if owners else read.addrs[spread % len(read.addrs)]
    secondary = None
    if write_keys:
        others = {other.addr_for(k) for k in write_keys}
        if len(others) > 1:
            return _cross()
        (second,) = others
        secondary = None if second == addr else second
    return TxPlan(addr, secondary, tuple(writes) if secondary else (), tuple(keys))
