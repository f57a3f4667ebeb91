"""Migration phases as a state machine: the legal steps on reload and what each phase does.

Owns the table of legal phase steps (DESIGN.md section 4), what each phase does with reads and
writes, the identity of a migration (a hash of both pools' rings) and the seal of its gate
(gate.py). Pure: no I/O, no clock; the jobs that act on these rules live in proxy/jobs/.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from proxy.config.phase import Phase
from proxy.config.schema import MigrationConfig, PoolConfig, ProxyConfig
from proxy.migration.gate import BackfillState, GateSeal, gate_key, gate_reason
from proxy.routing.ring import ketama_label
from proxy.routing.topology import PoolTopology, build_pool

__all__ = [
    "RULES",
    "STEPS",
    "ActiveMigration",
    "BackfillState",
    "GateSeal",
    "Phase",
    "PhaseRules",
    "active_migration",
    "check_step",
    "gate_reason",
    "migration_id",
    "needs_gate",
]


@dataclass(frozen=True, slots=True)
class PhaseRules:
    reads_target: bool  # reads (and write replies) come from the target pool
    secondary_writes: bool  # writes are also applied to the other pool
    shadow_compare: bool  # a sample of reads is compared against the other pool
    runs_backfill: bool  # the backfill job runs (one proxy of the fleet, under a lease)


RULES: Final[Mapping[Phase, PhaseRules]] = MappingProxyType(
    {
        Phase.NONE: PhaseRules(False, False, False, False),
        Phase.DOUBLE_WRITE: PhaseRules(False, True, True, False),
        Phase.BACKFILL: PhaseRules(False, True, True, True),
        Phase.CUT_READ: PhaseRules(True, True, True, False),
        Phase.RETIRE: PhaseRules(True, False, False, False),
    }
)

# Legal reload steps, besides staying in the same phase. Back steps are legal only while the
# source still receives every write (from cut-read); retire -> none also needs route == the target.
STEPS: Final[Mapping[Phase, tuple[Phase, ...]]] = MappingProxyType(
    {
        Phase.NONE: (Phase.DOUBLE_WRITE,),
        Phase.DOUBLE_WRITE: (Phase.BACKFILL,),
        Phase.BACKFILL: (Phase.DOUBLE_WRITE, Phase.CUT_READ),
        Phase.CUT_READ: (Phase.BACKFILL, Phase.DOUBLE_WRITE, Phase.RETIRE),
        Phase.RETIRE: (Phase.NONE,),
    }
)


def _phase(config: ProxyConfig) -> Phase:
    return config.migration.phase if config.migration else Phase.NONE


def _placement(pool: PoolConfig) -> tuple[object, ...]:
    """What decides which address owns a key: not the pool's name nor its servers' order
    (twemproxy sorts servers by label before building a ring)."""
    servers = sorted((ketama_label(s.host, s.port, s.name), s.weight, s.addr) for s in pool.servers)
    return (pool.hash, pool.distribution, pool.hash_tag, tuple(servers))


def check_step(old: ProxyConfig, new: ProxyConfig) -> str | None:
    """None when reloading from `old` to `new` is legal, else the reason it is refused."""
    before, after = _phase(old), _phase(new)
    if after != before and after not in STEPS[before]:
        legal = ", ".join(STEPS[before])
        return f"illegal phase step {before} -> {after} (legal from {before}: {legal})"
    if before is Phase.NONE:
        return _check_route_kept(old, new)
    assert old.migration is not None
    if after is Phase.NONE:
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
        _phase(old) is Phase.BACKFILL
        and _phase(new) is Phase.CUT_READ
        and new.migration is not None
        and not new.migration.force
    )


def migration_id(source: PoolConfig, target: PoolConfig) -> str:
    """12 hex digits naming a migration: every proxy of a fleet with the same two rings agrees."""
    text = json.dumps([_placement(source), _placement(target)], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class ActiveMigration:
    """A config's migration, ready for the jobs: both rings, its id and its settings."""

    mid: str  # migration_id of (source, target)
    phase: Phase  # never Phase.NONE
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
