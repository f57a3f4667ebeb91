"""proxy.migration.phases: the phase table, every legal and illegal reload step with its reason,
the gate, and migration ids."""

from __future__ import annotations

import re

import pytest

from proxy.config.phase import Phase
from proxy.config.schema import PHASES, ProxyConfig, parse_config
from proxy.migration.phases import (
    RULES,
    active_migration,
    check_step,
    gate_reason,
    migration_id,
    needs_gate,
)

OLD = ["127.0.0.1:7001:1 r1", "127.0.0.1:7002:1 r2", "127.0.0.1:7003:1 r3"]
NEW = [*OLD, "127.0.0.1:7004:1 r4", "127.0.0.1:7005:1 r5"]
ALL_PHASES: list[str | None] = [None, *PHASES]
LEGAL: dict[str | None, set[str | None]] = {
    None: {None, "double-write"},
    "double-write": {"double-write", "backfill"},
    "backfill": {"backfill", "double-write", "cut-read"},
    "cut-read": {"cut-read", "backfill", "double-write", "retire"},
    "retire": {"retire", None},
}


def config(
    phase: str | None = None,
    *,
    route: str = "old",
    old: list[str] = OLD,
    new: list[str] = NEW,
    extra_pool: str = "",
    migration: str = "",
    top: str = "",
) -> ProxyConfig:
    block = f"migration:\n  to: new\n  phase: {phase}\n{migration}" if phase else ""
    text = (
        f"pools:\n  old: {{servers: {old}}}\n  new: {{servers: {new}}}\n{extra_pool}"
        f"route: {route}\n{block}{top}"
    )
    return parse_config(text, env={})


def default_route(phase: str | None, before: str | None) -> str:
    """The route a legal config in `phase` has: the target once a migration has retired."""
    return "new" if phase is None and before == "retire" else "old"


# --- the phase table ---


def test_rules_per_phase() -> None:
    assert RULES[Phase.NONE] == RULES[Phase.NONE].__class__(False, False, False, False)
    assert RULES["double-write"].secondary_writes and not RULES["double-write"].reads_target
    assert RULES["double-write"].shadow_compare and not RULES["double-write"].runs_backfill
    assert RULES["backfill"].runs_backfill and RULES["backfill"].secondary_writes
    assert RULES["cut-read"].reads_target and RULES["cut-read"].secondary_writes
    assert RULES["retire"].reads_target and not RULES["retire"].secondary_writes
    assert not RULES["retire"].shadow_compare
    assert set(RULES) == {Phase.NONE, *PHASES}  # Phase.NONE: no migration block (None here)


@pytest.mark.parametrize("before", ALL_PHASES)
@pytest.mark.parametrize("after", ALL_PHASES)
def test_every_phase_step(before: str | None, after: str | None) -> None:
    old = config(before)
    new = config(after, route=default_route(after, before))
    reason = check_step(old, new)
    if after in LEGAL[before]:
        assert reason is None
        return
    name = {None: "none"}
    b, a = name.get(before, before), name.get(after, after)  # type: ignore[arg-type]
    assert reason is not None and reason.startswith(
        f"illegal phase step {b} -> {a} (legal from {b}: "
    )
    listed = reason.split(": ", 1)[1].rstrip(")").split(", ")
    assert {None if p == "none" else p for p in listed} == LEGAL[before] - {before}


def test_reason_text_names_both_phases() -> None:
    assert check_step(config("backfill"), config("retire")) == (
        "illegal phase step backfill -> retire (legal from backfill: double-write, cut-read)"
    )
    assert check_step(config(None), config("cut-read")) == (
        "illegal phase step none -> cut-read (legal from none: double-write)"
    )


def test_leaving_retire_needs_the_target_as_route() -> None:
    reason = check_step(config("retire"), config(None, route="old"))
    assert reason is not None and "route: new" in reason
    assert check_step(config("retire"), config(None, route="new")) is None
    changed = config(None, route="new", new=[*NEW, "127.0.0.1:7006:1 r6"])
    assert "keys would move" in (check_step(config("retire"), changed) or "")


def test_no_migration_route_may_move_only_to_an_identical_ring() -> None:
    twin = "  twin: {servers: [127.0.0.1:7003:1 r3, 127.0.0.1:7001:1 r1, 127.0.0.1:7002:1 r2]}\n"
    assert check_step(config(extra_pool=twin), config(route="twin", extra_pool=twin)) is None
    reason = check_step(config(), config(route="new"))
    assert reason is not None and "place keys differently" in reason
    # Same route: a none -> none reload may change the pool (e.g. replace a server).
    moved = ["127.0.0.1:7001:1 r1", "127.0.0.1:7002:1 r2", "127.0.0.1:7009:1 r3"]
    assert check_step(config(), config(old=moved)) is None
    starting = check_step(config(), config("double-write", old=moved))
    assert starting is not None and "while starting a migration" in starting


@pytest.mark.parametrize("phase", PHASES)
def test_a_migration_keeps_its_pools_and_route(phase: str) -> None:
    base = config(phase)
    other = "  other: {servers: [127.0.0.1:7008]}\n"
    to_other = parse_config(
        f"pools:\n  old: {{servers: {OLD}}}\n  new: {{servers: {NEW}}}\n{other}"
        f"route: old\nmigration: {{to: other, phase: {phase}}}\n",
        env={},
    )
    assert "cannot change migration.to" in (check_step(base, to_other) or "")
    grown = config(phase, old=[*OLD, "127.0.0.1:7009:1 r9"])
    assert "source pool 'old'" in (check_step(base, grown) or "")
    md5 = parse_config(
        f"pools:\n  old: {{servers: {OLD}}}\n  new: {{hash: md5, servers: {NEW}}}\n"
        f"route: old\nmigration: {{to: new, phase: {phase}}}\n",
        env={},
    )
    assert "target pool 'new'" in (check_step(base, md5) or "")
    untagged = parse_config(
        f"pools:\n  old: {{servers: {OLD}}}\n  new: {{hash_tag: '', servers: {NEW}}}\n"
        f"route: old\nmigration: {{to: new, phase: {phase}}}\n",
        env={},
    )
    assert "target pool 'new'" in (check_step(base, untagged) or "")
    # Settings that do not move keys may change; so may the order servers are listed in.
    tuned = config(
        phase,
        old=list(reversed(OLD)),
        migration="  force: true\n  backfill: {rate_keys_per_s: 10}\n  shadow_sample_ratio: 0.5\n",
        top="listen: 127.0.0.1:6399\n",
    )
    assert check_step(base, tuned) is None


def test_route_cannot_change_during_a_migration() -> None:
    twin = "  twin: {servers: [127.0.0.1:7001:1 r1, 127.0.0.1:7002:1 r2, 127.0.0.1:7003:1 r3]}\n"
    reason = check_step(
        config("double-write", extra_pool=twin),
        config("double-write", route="twin", extra_pool=twin),
    )
    assert reason is not None and "cannot change route during a migration" in reason


def test_needs_gate_only_backfill_to_cut_read_without_force() -> None:
    assert needs_gate(config("backfill"), config("cut-read"))
    assert not needs_gate(config("backfill"), config("cut-read", migration="  force: true\n"))
    for before, after in [("double-write", "backfill"), ("cut-read", "cut-read"), (None, None)]:
        assert not needs_gate(config(before), config(after))
    assert not needs_gate(config("cut-read"), config("retire"))


def test_gate_reason() -> None:
    assert gate_reason({"backfill": "done", "mismatches_after_repair": 0}) is None
    assert "not finished" in (gate_reason(None) or "")
    assert "3 mismatches" in (gate_reason({"backfill": "done", "mismatches_after_repair": 3}) or "")
    assert "not done" in (gate_reason({"backfill": "running"}) or "")


# --- identity ---


def test_migration_id_names_the_two_rings() -> None:
    c = config("backfill")
    mid = migration_id(c.pool("old"), c.pool("new"))
    assert re.fullmatch(r"[0-9a-f]{12}", mid)
    assert mid == migration_id(config("double-write").pool("old"), c.pool("new"))
    reordered = config("backfill", old=list(reversed(OLD)))
    assert migration_id(reordered.pool("old"), reordered.pool("new")) == mid
    grown = config("backfill", new=[*NEW, "127.0.0.1:7006:1 r6"])
    assert migration_id(grown.pool("old"), grown.pool("new")) != mid
    assert migration_id(c.pool("new"), c.pool("old")) != mid
    active = active_migration(c)
    assert active is not None and active.mid == mid and active.phase == "backfill"
    assert active.source.name == "old" and active.target.name == "new"
    assert active_migration(config()) is None


# --- prefix routes through a migration ---

QUEUES = "  queues: {servers: ['127.0.0.1:7101']}\n"


def routed(phase: str | None, routes: str, *, route: str = "old", source: str = "") -> ProxyConfig:
    block = f"migration:\n  to: new\n  phase: {phase}\n{source}" if phase else ""
    text = (
        f"pools:\n  old: {{servers: {OLD}}}\n  new: {{servers: {NEW}}}\n{QUEUES}"
        f"route: {route}\nroutes: {routes}\n{block}"
    )
    return parse_config(text, env={})


RQ_OLD = "[{prefix: 'rq:', pool: queues}, {prefix: 'x:', pool: old}]"
RQ_NEW = "[{prefix: 'rq:', pool: queues}, {prefix: 'x:', pool: new}]"


def test_routes_may_change_outside_a_migration() -> None:
    assert check_step(routed(None, "[]"), routed(None, RQ_OLD)) is None
    assert check_step(routed(None, RQ_OLD), routed(None, "[]")) is None


def test_routes_cannot_change_when_a_migration_starts_or_runs() -> None:
    reason = check_step(routed(None, "[]"), routed("double-write", RQ_OLD))
    assert reason is not None and "two reloads" in reason
    reason = check_step(routed("backfill", RQ_OLD), routed("backfill", "[]"))
    assert reason is not None and "cannot change routes during a migration" in reason


def test_leaving_retire_moves_the_routes_of_the_source_pool_to_the_target() -> None:
    before = routed("retire", RQ_OLD)
    assert check_step(before, routed(None, RQ_NEW, route="new")) is None
    reason = check_step(before, routed(None, RQ_OLD, route="new"))
    assert reason == (
        "leaving retire needs the routes of pool 'old' to name 'new', the others unchanged"
        " (routes: rq: -> queues, x: -> new)"
    )


def test_a_routed_pool_can_be_the_migrating_one() -> None:
    src = "  from: queues\n"
    rq = "[{prefix: 'rq:', pool: queues}]"
    moved = "[{prefix: 'rq:', pool: new}]"
    assert check_step(routed(None, rq), routed("double-write", rq, source=src)) is None
    assert check_step(routed("retire", rq, source=src), routed(None, moved)) is None
    reason = check_step(routed("backfill", rq, source=src), routed("backfill", rq))
    assert reason == (
        "cannot change migration.from during a migration ('queues' -> 'old');"
        " finish or roll back the migration first"
    )
    m = active_migration(routed("backfill", rq, source=src))
    assert m is not None and m.source.name == "queues"
    assert m.moves(b"rq:job:1") and not m.moves(b"user:1")


def test_the_jobs_leave_other_pools_keys_alone() -> None:
    m = active_migration(routed("backfill", RQ_OLD))
    assert m is not None
    assert m.moves(b"user:1") and m.moves(b"x:1") and not m.moves(b"rq:job:1")


def test_routes_are_part_of_the_migration_id() -> None:
    plain = active_migration(routed("backfill", "[]"))
    with_routes = active_migration(routed("backfill", RQ_OLD))
    assert plain is not None and with_routes is not None
    assert plain.mid != with_routes.mid
    assert plain.mid == active_migration(config("backfill")).mid  # type: ignore[union-attr]
