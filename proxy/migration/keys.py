"""The reserved keys where a migration keeps its shared state (lease, cursors, gate).

The prefix itself, and the rule that clients never touch it, are the commands layer's
(proxy/commands/checks.py); here: the names of one migration's keys and where they live. Pure.
"""

from __future__ import annotations

from proxy.commands.checks import RESERVED_PREFIX, is_reserved
from proxy.routing.topology import PoolTopology

__all__ = ["RESERVED_PREFIX", "is_reserved", "state_key", "state_owner"]


def state_key(mid: str, *parts: str) -> bytes:
    """A migration's shared state key: b"__shardproxy:<mid>:<part>:<part>..."."""
    return RESERVED_PREFIX + mid.encode() + b":" + b":".join(p.encode() for p in parts)


def state_owner(target: PoolTopology, mid: str) -> str:
    """The address that holds all of a migration's state keys (lease, cursors, gate)."""
    return target.addr_for(state_key(mid, "state"))
