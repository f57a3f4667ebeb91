"""The re-shard plan: how much of the keyspace moves, from which server to which.

Two views: ring arithmetic (migration.moved_shares: the share of the hash space per source ->
target pair), and a sample of the real keys (SCAN up to N keys per source server, placed on both
rings). Rendering is plain text for the CLI: one table row per pair, with a bar.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from proxy.jobs.executor import Executor, JobError, keyed_dbs, scan_keys
from proxy.migration.keys import is_reserved
from proxy.migration.phases import ActiveMigration
from proxy.migration.shares import moved_shares, share_method
from proxy.routing.prefix import LongestPrefix

__all__ = ["KeySample", "render_plan", "sample_keys"]

BAR_WIDTH: Final = 40  # characters of a 100% bar


@dataclass(slots=True)
class KeySample:
    sampled: int = 0  # keys placed on both rings
    stay: int = 0  # keys whose owner address does not change
    moves: dict[tuple[str, str], int] = field(default_factory=dict)  # (source, target) -> keys
    stale: int = 0  # keys on a source server that its ring does not place there
    elsewhere: int = 0  # keys on a source server that prefix routes give to another pool
    # route prefix ("" for the keys no route claims) -> [sampled, would move]
    by_route: dict[str, list[int]] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)  # address -> error


async def sample_keys(ex: Executor, m: ActiveMigration, per_server: int) -> KeySample:
    """SCAN up to `per_server` keys of each source server (from its databases with keys, in
    order); count where each would move."""
    sample = KeySample()
    route_of = LongestPrefix([(r.prefix.encode(), r.prefix) for r in m.routes]).match
    for addr in dict.fromkeys(m.source.addrs):
        seen = 0
        try:
            for db in await keyed_dbs(ex, [addr]):
                async for _, keys in scan_keys(ex.in_db(db), addr, min(per_server, 1000)):
                    for key in keys[: per_server - seen]:
                        _place(sample, m, addr, key, route_of(key) or "")
                    seen += len(keys)
                    if seen >= per_server:
                        break
                if seen >= per_server:
                    break
        except JobError as exc:
            sample.unreachable[addr] = str(exc)
    return sample


def _place(sample: KeySample, m: ActiveMigration, addr: str, key: bytes, route: str) -> None:
    if is_reserved(key):
        return
    if not m.moves(key):
        sample.elsewhere += 1
        return
    if m.source.addr_for(key) != addr:
        sample.stale += 1
        return
    sample.sampled += 1
    counts = sample.by_route.setdefault(route, [0, 0])
    counts[0] += 1
    dst = m.target.addr_for(key)
    if dst == addr:
        sample.stay += 1
    else:
        counts[1] += 1
        sample.moves[(addr, dst)] = sample.moves.get((addr, dst), 0) + 1


def _route_lines(m: ActiveMigration) -> list[str]:
    """Per prefix route: does it follow this migration (it names the source pool) or stay?"""
    if not m.routes:
        return []
    lines = ["prefix routes (longest prefix wins):"]
    for r in m.routes:
        what = (
            f"follows the migration to pool {m.target.name}: its keys move by the same rings"
            if r.pool == m.source.name
            else f"stays on pool {r.pool}: none of its keys move"
        )
        lines.append(f"  {r.prefix!r} -> {r.pool}: {what}")
    return lines


def _bar(share: float) -> str:
    return "#" * max(1, round(share * BAR_WIDTH)) if share > 0 else ""


def render_plan(
    m: ActiveMigration, names: Mapping[str, str], sample: KeySample | None
) -> list[str]:
    """The plan as lines of text: ring arithmetic, then the sample (or why there is none)."""
    shares = moved_shares(m.source, m.target)
    total = sum(shares.values())

    def label(addr: str) -> str:
        name = names.get(addr, addr)
        return addr if name == addr else f"{name} {addr}"

    lines = [
        f"migration {m.mid}: pool {m.source.name} ({len(m.source.addrs)} servers,"
        f" {m.source.ring.distribution} {m.source.ring.hash_name}) -> pool {m.target.name}"
        f" ({len(m.target.addrs)} servers, {m.target.ring.distribution}"
        f" {m.target.ring.hash_name}), phase {m.phase}",
        f"keys that move: {total * 100:.2f}% of the hash space"
        f" ({share_method(m.source, m.target)}); stay: {(1 - total) * 100:.2f}%",
        f"  {'from':<30} {'to':<30} {'share':>7}",
    ]
    for (src, dst), share in sorted(shares.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {label(src):<30} {label(dst):<30} {share * 100:6.2f}%  {_bar(share)}")
    lines += _route_lines(m)
    if sample is None:
        return lines
    for addr, error in sample.unreachable.items():
        lines.append(f"note: {label(addr)} did not answer ({error}); its keys are not sampled")
    if not sample.sampled:
        lines.append("sampled keys: none (no reachable source server holds a key)")
        return lines
    moved = sum(sample.moves.values())
    lines.append(
        f"sampled {sample.sampled} keys: {moved} would move ({moved / sample.sampled * 100:.1f}%)"
        + (f"; {sample.stale} stale keys ignored" if sample.stale else "")
        + (
            f"; {sample.elsewhere} keys of other pools (prefix routes) left alone"
            if sample.elsewhere
            else ""
        )
    )
    if m.routes:
        for prefix, (count, moving) in sorted(sample.by_route.items()):
            shown = f"route {prefix!r}" if prefix else "keys no route claims"
            lines.append(f"  {shown}: sampled {count}, would move {moving}")
    for (src, dst), count in sorted(sample.moves.items(), key=lambda kv: -kv[1]):
        share = count / sample.sampled
        lines.append(
            f"  {label(src):<30} {label(dst):<30} {count:>7}  {share * 100:5.1f}%  {_bar(share)}"
        )
    return lines
