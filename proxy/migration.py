"""Migration phases as a state machine, the reserved state keys, and how many keys a re-shard moves.

Owns the table of legal phase steps on reload (DESIGN.md section 4), what each phase does with reads
and writes, the identity of a migration (a hash of both pools' rings), the names of its shared
state keys, the seal of its gate (proxy/gate.py), and the exact share of the hash space that
changes owner between two rings. Pure: no I/O, no clock; the jobs that act on these rules live in
proxy/migrator.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from proxy.config import MigrationConfig, PoolConfig, ProxyConfig
from proxy.gate import GateSeal, gate_key, gate_reason
from proxy.hashing import RING_SIZE, Ring, ketama_label, ketama_points
from proxy.topology import PoolTopology, build_pool

__all__ = [
    "NONE",
    "RESERVED_PREFIX",
    "RULES",
    "STEPS",
    "ActiveMigration",
    "GateSeal",
    "PhaseRules",
    "active_migration",
    "check_step",
    "gate_reason",
    "is_reserved",
    "migration_id",
    "moved_shares",
    "needs_gate",
    "share_method",
    "state_key",
    "state_owner",
]

NONE: Final = "none"  # how a missing migration block is named in messages


@dataclass(frozen=True, slots=True)
class PhaseRules:
    reads_target: bool  # reads (and write replies) come from the target pool
    secondary_writes: bool  # writes are also applied to the other pool
    shadow_compare: bool  # a sample of reads is compared against the other pool
    runs_backfill: bool  # the backfill job runs (one proxy of the fleet, under a lease)


RULES: Final[Mapping[str | None, PhaseRules]] = MappingProxyType(
    {
        None: PhaseRules(False, False, False, False),
        "double-write": PhaseRules(False, True, True, False),
        "backfill": PhaseRules(False, True, True, True),
        "cut-read": PhaseRules(True, True, True, False),
        "retire": PhaseRules(True, False, False, False),
    }
)

# Legal reload steps, besides staying in the same phase. Back steps are legal only while the
# source still receives every write (from cut-read); retire -> none also needs route == the target.
STEPS: Final[Mapping[str | None, tuple[str | None, ...]]] = MappingProxyType(
    {
        None: ("double-write",),
        "double-write": ("backfill",),
        "backfill": ("double-write", "cut-read"),
        "cut-read": ("backfill", "double-write", "retire"),
        "retire": (None,),
    }
)


def _name(phase: str | None) -> str:
    return NONE if phase is None else phase


def _phase(config: ProxyConfig) -> str | None:
    return config.migration.phase if config.migration else None


def _placement(pool: PoolConfig) -> tuple[object, ...]:
    """What decides which address owns a key: not the pool's name nor its servers' order
    (twemproxy sorts servers by label before building a ring)."""
    servers = sorted((ketama_label(s.host, s.port, s.name), s.weight, s.addr) for s in pool.servers)
    return (pool.hash, pool.distribution, pool.hash_tag, tuple(servers))


def check_step(old: ProxyConfig, new: ProxyConfig) -> str | None:
    """None when reloading from `old` to `new` is legal, else the reason it is refused."""
    before, after = _phase(old), _phase(new)
    if after != before and after not in STEPS[before]:
        legal = ", ".join(_name(p) for p in STEPS[before])
        return (
            f"illegal phase step {_name(before)} -> {_name(after)}"
            f" (legal from {_name(before)}: {legal})"
        )
    if before is None:
        return _check_route_kept(old, new)
    assert old.migration is not None
    if after is None:
        return _check_retired(old, new)
    assert new.migration is not None
    if new.migration.to != old.migration.to:
        return (
            f"cannot change migration.to during a migration ({old.migration.to!r} ->"
            f" {new.migration.to!r}); finish or roll back the migration first"
        )
    if new.route != old.route:
        return (
            f"cannot change route during a migration ({old.route!r} -> {new.route!r});"
            " reads move to the target with phase cut-read"
        )
    for role, name in (("source", old.route), ("target", old.migration.to)):
        if _placement(old.pool(name)) != _placement(new.pool(name)):
            return (
                f"cannot change the servers, hash, distribution or hash_tag of the {role} pool"
                f" {name!r} during a migration: keys would move under the backfill"
            )
    return None


def _check_route_kept(old: ProxyConfig, new: ProxyConfig) -> str | None:
    """From no migration: the route may change only to a pool that places every key alike."""
    if new.route == old.route and new.migration is None:
        return None
    if _placement(old.pool(old.route)) == _placement(new.pool(new.route)):
        return None
    if new.route == old.route:
        return (
            f"cannot change the ring of route pool {new.route!r} while starting a migration;"
            " start the migration from the pool as it serves now"
        )
    return (
        f"cannot switch route from {old.route!r} to {new.route!r}: their rings place keys"
        " differently; re-shard with a migration block (phase double-write)"
    )


def _check_retired(old: ProxyConfig, new: ProxyConfig) -> str | None:
    assert old.migration is not None
    target = old.migration.to
    if new.route != target:
        return f"leaving retire needs route: {target} (the migration's target), got {new.route!r}"
    if _placement(old.pool(target)) != _placement(new.pool(new.route)):
        return (
            f"cannot change the ring of pool {target!r} while leaving retire: keys would move;"
            " drop the migration block first, then re-shard"
        )
    return None


def needs_gate(old: ProxyConfig, new: ProxyConfig) -> bool:
    """backfill -> cut-read must see a finished, clean backfill unless migration.force is set."""
    return (
        _phase(old) == "backfill"
        and _phase(new) == "cut-read"
        and new.migration is not None
        and not new.migration.force
    )


def migration_id(source: PoolConfig, target: PoolConfig) -> str:
    """12 hex digits naming a migration: every proxy of a fleet with the same two rings agrees."""
    text = json.dumps([_placement(source), _placement(target)], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


RESERVED_PREFIX: Final = b"__shardproxy:"


def state_key(mid: str, *parts: str) -> bytes:
    """A migration's shared state key: b"__shardproxy:<mid>:<part>:<part>..."."""
    return RESERVED_PREFIX + mid.encode() + b":" + b":".join(p.encode() for p in parts)


def is_reserved(key: bytes) -> bool:
    """Keys the jobs keep to themselves: never copied, verified or cleaned up."""
    return key.startswith(RESERVED_PREFIX)


def state_owner(target: PoolTopology, mid: str) -> str:
    """The address that holds all of a migration's state keys (lease, cursors, gate)."""
    return target.addr_for(state_key(mid, "state"))


# --- how much moves --------------------------------------------------------------------------

MODULA_EXACT_LIMIT: Final = 1 << 22  # residues (lcm of total weights) enumerated exactly
SAMPLE_POINTS: Final = 1 << 20  # evenly spaced hashes when the exact count is too large


def share_method(source: PoolTopology, target: PoolTopology) -> str:
    """How moved_shares computes its answer for these two pools:

    - "exact": ring arithmetic over the shared 2^32 hash space (same hash function and tag);
      ketama arcs are merged, modula residues counted modulo the lcm of the total weights;
    - "uniform sample": the same, but on 2^20 evenly spaced hashes (huge modula weights);
    - "independent": hash functions or tags differ, so placements are independent: the share
      of (a, b) is share(a) * share(b) - an expectation, not a count.
    """
    a, b = source.ring, target.ring
    if a.hash_name != b.hash_name or a.hash_tag != b.hash_tag:
        return "independent"
    if a.distribution == b.distribution == "ketama":
        return "exact"
    if _residue_period(a, b) * _arcs(a, b) <= MODULA_EXACT_LIMIT:
        return "exact"
    return "uniform sample"


def moved_shares(source: PoolTopology, target: PoolTopology) -> dict[tuple[str, str], float]:
    """Fraction of the hash space whose owner address changes, per (source addr, target addr).

    Pairs with the same address (a reused server) are left out: those keys do not move.
    """
    method = share_method(source, target)
    if method == "independent":
        counts = _independent(source.ring, target.ring)
        scale = 1.0
    elif method == "exact":
        counts = _exact_counts(source.ring, target.ring)
        scale = 1 / RING_SIZE
    else:
        counts = _sampled_counts(source.ring, target.ring)
        scale = 1 / SAMPLE_POINTS
    moved: dict[tuple[str, str], float] = {}
    for (i, j), count in sorted(counts.items()):
        pair = (source.addrs[i], target.addrs[j])
        if pair[0] != pair[1] and count:
            moved[pair] = moved.get(pair, 0.0) + count * scale
    return moved


def _independent(a: Ring, b: Ring) -> dict[tuple[int, int], float]:
    sa, sb = a.shares(), b.shares()
    return {(i, j): x * y for i, x in enumerate(sa) for j, y in enumerate(sb)}


def _ketama_arcs(ring: Ring) -> list[int]:
    return ketama_points(ring.labels, ring.weights)[0] if ring.distribution == "ketama" else []


def _arcs(a: Ring, b: Ring) -> int:
    return len(set(_ketama_arcs(a)) | set(_ketama_arcs(b))) + 1


def _residue_period(a: Ring, b: Ring) -> int:
    totals = [sum(r.weights) for r in (a, b) if r.distribution == "modula"]
    return math.lcm(*totals) if totals else 1


def _exact_counts(a: Ring, b: Ring) -> dict[tuple[int, int], float]:
    """Hashes per (owner in a, owner in b), counted exactly.

    The merged ketama points cut [0, 2^32) into arcs where both ketama owners are constant (a
    ring's owner of h is its first point >= h, so it is the owner of the arc's upper end); inside
    an arc a modula owner depends on h mod its total weight only, so the count per residue of the
    lcm period is a closed form.
    """
    bounds = sorted(set(_ketama_arcs(a)) | set(_ketama_arcs(b)) | {RING_SIZE - 1})
    period = _residue_period(a, b)
    counts: dict[tuple[int, int], float] = {}
    low = 0
    for high in bounds:  # the arc [low, high]
        if period == 1:
            pair = (a.node_for_hash(high), b.node_for_hash(high))
            counts[pair] = counts.get(pair, 0) + high - low + 1
        else:
            for r in range(period):
                n = _count_residue(high, r, period) - _count_residue(low - 1, r, period)
                pair = (_owner(a, high, r), _owner(b, high, r))
                counts[pair] = counts.get(pair, 0) + n
        low = high + 1
    return counts


def _owner(ring: Ring, arc_end: int, residue: int) -> int:
    """Owner of a hash in an arc ending at arc_end with h % period == residue (modula: the
    period is a multiple of the ring's total weight, so h % total == residue % total)."""
    return ring.node_for_hash(arc_end if ring.distribution == "ketama" else residue)


def _count_residue(upto: int, residue: int, period: int) -> int:
    """How many h in [0, upto] have h % period == residue."""
    if upto < residue:
        return 0
    return (upto - residue) // period + 1


def _sampled_counts(a: Ring, b: Ring) -> dict[tuple[int, int], float]:
    step = RING_SIZE // SAMPLE_POINTS
    offset = random.Random(0).randrange(step)  # fixed, so the answer is reproducible
    counts: dict[tuple[int, int], float] = {}
    locate_a: Callable[[int], int] = a.node_for_hash
    locate_b: Callable[[int], int] = b.node_for_hash
    for h in range(offset, RING_SIZE, step):
        pair = (locate_a(h), locate_b(h))
        counts[pair] = counts.get(pair, 0) + 1
    return counts


@dataclass(frozen=True, slots=True)
class ActiveMigration:
    """A config's migration, ready for the jobs: both rings, its id and its settings."""

    mid: str  # migration_id of (source, target)
    phase: str  # one of PHASES
    source: PoolTopology  # the route pool: where the keys are now
    target: PoolTopology  # migration.to: where they go
    settings: MigrationConfig
    seal: GateSeal  # signs the gate the backfill writes, checks the one a reload reads


def active_migration(config: ProxyConfig) -> ActiveMigration | None:
    migration = config.migration
    if migration is None:
        return None
    source, target = config.pool(config.route), config.pool(migration.to)
    mid = migration_id(source, target)
    key = gate_key(migration.gate_secret, config.backend.password)
    identity = json.dumps(_placement(target), separators=(",", ":"))
    return ActiveMigration(
        mid=mid,
        phase=migration.phase,
        source=build_pool(source),
        target=build_pool(target),
        settings=migration,
        seal=GateSeal(mid, identity, key),
    )
