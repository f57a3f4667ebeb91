"""Migration phases as a state machine: the legal steps on reload and what each phase does.

Owns the table of legal phase steps (DESIGN.md section 4), what each phase does with reads and
writes, the identity of a migration (a hash of both pools' rings) and the seal of its gate
(gate.py). Pure: no I/O, no clock; the jobs that act on these rules live in proxy/jobs/.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final

from proxy.config.phase import Phase
from proxy.config.schema import MigrationConfig, PoolConfig, ProxyConfig, RouteConfig
from proxy.migration.gate import BackfillState, GateSeal, gate_key, gate_reason
from proxy.routing.prefix import pool_matcher
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
    if new.route != old.route:
        return (
            f"cannot change route during a migration ({old.route!r} -> {new.route!r});"
            " reads move to the target with phase cut-read"
        )
    for what, was, now in (
        ("migration.to", old.migration.to, new.migration.to),
        ("migration.from", old.migration_source, new.migration_source),
    ):
        if was != now:
            return (
                f"cannot change {what} during a migration ({was!r} -> {now!r});"
                " finish or roll back the migration first"
            )
    if new.routes != old.routes:
        return (
            "cannot change routes during a migration: they decide which keys move;"
            " finish or roll back the migration first"
        )
    source = old.migration_source
    assert source is not None
    for role, name in (("source", source), ("target", old.migration.to)):
        if _placement(old.pool(name)) != _placement(new.pool(name)):
            return (
                f"cannot change the servers, hash, distribution or hash_tag of the {role} pool"
                f" {name!r} during a migration: keys would move under the backfill"
            )
    return None


def _check_route_kept(old: ProxyConfig, new: ProxyConfig) -> str | None:
    """From no migration: the route may change only to a pool that places every key alike; a
    migration starts from the pools and routes as they serve now."""
    source = new.migration_source
    if new.migration is not None:
        if new.routes != old.routes:
            return (
                "change routes and start a migration in two reloads: routes decide which keys move"
            )
        if source is not None and source != new.route and _ring_changed(old, new, source):
            return (
                f"cannot change the ring of pool {source!r} while starting a migration;"
                " start the migration from the pool as it serves now"
            )
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


def _ring_changed(old: ProxyConfig, new: ProxyConfig, name: str) -> bool:
    return name in old.pools and _placement(old.pool(name)) != _placement(new.pool(name))


def _check_retired(old: ProxyConfig, new: ProxyConfig) -> str | None:
    """Leaving retire: whatever named the source pool (route, prefix routes) names the target."""
    assert old.migration is not None
    target, source = old.migration.to, old.migration_source

    def follow(name: str) -> str:
        return target if name == source else name

    if new.route != follow(old.route):
        wanted = follow(old.route)
        return f"leaving retire needs route: {wanted} (the migration's target), got {new.route!r}"
    routes = tuple(replace(r, pool=follow(r.pool)) for r in old.routes)
    if new.routes != routes:
        shown = ", ".join(f"{r.prefix} -> {r.pool}" for r in routes) or "none"
        return (
            f"leaving retire needs the routes of pool {source!r} to name {target!r}, the others"
            f" unchanged (routes: {shown})"
        )
    if _placement(old.pool(target)) != _placement(new.pool(target)):
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


def migration_id(
    source: PoolConfig, target: PoolConfig, routes: tuple[RouteConfig, ...] = ()
) -> str:
    """12 hex digits naming a migration: every proxy of a fleet with the same two rings (and the
    same prefix routes, which decide which keys are the source pool's) agrees."""
    parts: list[object] = [_placement(source), _placement(target)]
    if routes:
        parts.append([[r.prefix, r.pool] for r in routes])
    text = json.dumps(parts, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class ActiveMigration:
    """A config's migration, ready for the jobs: both rings, its id and its settings."""

    mid: str  # migration_id of (source, target)
    phase: Phase  # never Phase.NONE
    source: PoolTopology  # migration.from, else the route pool: where the keys are now
    target: PoolTopology  # migration.to: where they go
    settings: MigrationConfig
    seal: GateSeal  # signs the gate the backfill writes, checks the one a reload reads
    # key -> the name of the pool that owns it by the prefix routes (else route). The jobs
    # scan the source pool's servers and leave alone every key this does not give to `source`.
    pool_of: Callable[[bytes], str] = field(default=lambda key: "", compare=False)
    routes: tuple[RouteConfig, ...] = ()  # the config's prefix routes (for `plan`'s report)

    def moves(self, key: bytes) -> bool:
        """Is the key the migrating pool's (by prefix routes), so the jobs may copy or delete it?"""
        return self.pool_of(key) == self.source.name


def active_migration(config: ProxyConfig) -> ActiveMigration | None:
    migration = config.migration
    if migration is None:
        return None
    source_name = config.migration_source
    assert source_name is not None
    source, target = config.pool(source_name), config.pool(migration.to)
    mid = migration_id(source, target, config.routes)
    routes = [(r.prefix.encode(), r.pool) for r in config.routes]
    key = gate_key(migration.gate_secret, config.backend.password)
    identity = json.dumps(_placement(target), separators=(",", ":"))
    return ActiveMigration(
        mid=mid,
        phase=migration.phase,
        source=build_pool(source),
        target=build_pool(target),
        settings=migration,
        seal=GateSeal(mid, identity, key),
        pool_of=pool_matcher(config.route, routes),
        routes=config.routes,
    )
