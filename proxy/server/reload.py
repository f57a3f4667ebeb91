"""Config reload: validate the whole new file, check the phase step and its gate, or refuse.

A refused reload changes nothing: the old topology keeps serving and the reason is returned (and
logged and counted by the caller). `watch_config` turns file changes into reloads, including the
symlink swap Kubernetes does for a ConfigMap (it watches the directory, not the file, and compares
the file's hash, read_config_file's, with the hash of the config in use, so a touch without change
is not a reload).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import watchfiles

from proxy.commands.users import compile_users
from proxy.config.reader import read_config_file
from proxy.config.schema import ConfigError, ProxyConfig, parse_config
from proxy.jobs.backfill import NO_FENCE, Executor, Fence, read_gate
from proxy.jobs.verify import Verifier
from proxy.migration.phases import (
    ActiveMigration,
    active_migration,
    check_step,
    gate_reason,
    needs_gate,
)
from proxy.net.pool import BackendPool
from proxy.net.tls import PLAIN, TLSContexts, load_tls
from proxy.server.aclcheck import check_config, refusal

log = logging.getLogger("shardproxy.reload")


@dataclass(frozen=True)
class Accepted:
    config: ProxyConfig
    text: str
    tls: TLSContexts = PLAIN  # the new config's TLS, every file read again


async def validate_reload(
    old: ProxyConfig,
    text: str,
    source: str,
    pool: BackendPool,
    pending_repairs: int = 0,
    *,
    workers_override: int | None = None,
    check_gate: bool = True,
    check_acl: bool = True,
    fence: Fence = NO_FENCE,
) -> Accepted | str:
    """The new config when it may replace `old`, else the reason it may not.

    `workers_override` (serve --workers) replaces the file's `workers`, as it did at start.
    `check_gate` False skips the backfill -> cut-read gate: a supervised reload's apply step,
    after every worker checked it. `check_acl` False leaves backend.acl_check's refusal to the
    caller: a worker, whose supervisor checks the backend user once for the fleet."""
    try:
        new = parse_config(text, source)
    except ConfigError as exc:
        return str(exc)
    try:
        compile_users(new.client)
    except ConfigError as exc:
        return str(exc)
    if workers_override is not None:
        new = replace(new, workers=workers_override)
    if new.listen != old.listen:
        return "listen cannot change on reload (restart the proxy)"
    if new.admin != old.admin:
        return "admin cannot change on reload (restart the proxy)"
    if new.workers != old.workers:
        return "workers cannot change on reload (restart the proxy)"
    moved = _listener_change(old, new)
    if moved:
        return moved
    try:
        tls = load_tls(new)  # a certificate renewed on disk is read here
    except ConfigError as exc:
        return str(exc)
    reason = check_step(old, new)
    if reason:
        return reason
    if check_gate and needs_gate(old, new):
        if pending_repairs:
            return (
                f"backfill -> cut-read is gated: {pending_repairs} keys whose secondary write "
                "failed are still waiting for repair on this proxy "
                "(set migration.force: true to override)"
            )
        reason = await _gate_problem(new, pool, fence)
        if reason:
            return reason
    if check_acl and new.backend.acl_check == "refuse":
        reason = refusal(await check_config(new, tls.backends))
        if reason:
            return reason
    return Accepted(new, text, tls)


def _listener_change(old: ProxyConfig, new: ProxyConfig) -> str:
    """Client ports are bound once: TLS may get new files on reload, not new ports."""
    old_tls, new_tls = old.client.tls, new.client.tls
    if (old_tls is None) != (new_tls is None):
        return "client.tls cannot be turned on or off on reload (restart the proxy)"
    if old_tls is not None and new_tls is not None and old_tls.listen != new_tls.listen:
        return "client.tls.listen cannot change on reload (restart the proxy)"
    return ""


async def _gate_problem(new: ProxyConfig, pool: BackendPool, fence: Fence) -> str:
    """Why the gate stays shut: it is missing, unsigned or badly signed, reports mismatches, or
    a random sample of moved keys differs between source and target now."""
    migration = active_migration(new)
    assert migration is not None
    ex = Executor(pool.backends)
    try:
        gate = await read_gate(ex, migration.target, migration.mid)
    except Exception as exc:  # the gate's home is down or unreadable: refuse, explain
        return f"backfill -> cut-read is gated and the gate could not be read: {exc}"
    reason = gate_reason(gate, migration.seal) or await _sample_problem(ex, migration, fence)
    if reason:
        return f"backfill -> cut-read is gated: {reason} (set migration.force: true to override)"
    return ""


async def _sample_problem(ex: Executor, migration: ActiveMigration, fence: Fence) -> str | None:
    """A gate can be written by anyone who can write a key on the target pool (a client's EVAL
    can): before reads move, re-compare a random sample of moved keys, source vs target."""
    settings = migration.settings
    verifier = Verifier(
        ex,
        migration.source,
        migration.target,
        ttl_tolerance_ms=settings.verify_ttl_tolerance_ms,
        claims=migration.moves,
        fence=fence,
        concurrency=settings.backfill.batch_keys,
    )
    try:
        report = await verifier.sample(settings.gate_sample_keys)
    except Exception as exc:  # a backend down or failing: the data cannot be vouched for
        return f"the sampled re-check of moved keys failed: {exc}"
    if report.problems == 0:
        return None
    return (
        f"a re-check of {report.checked} moved keys sampled at random found {report.problems}"
        f" that differ between source and target ({'; '.join(report.samples[:3])}): the gate"
        " does not match the data; run `shardproxy backfill --restart` or `shardproxy verify"
        " --repair`"
    )


async def watch_config(
    path: str, current_hash: Callable[[], str], reload: Callable[[], Awaitable[object]]
) -> None:
    """Reload whenever the file's content changes (runs until cancelled)."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    async for _changes in watchfiles.awatch(directory, debounce=200, step=50):
        try:
            changed = read_config_file(path).hash != current_hash()
        except ConfigError:  # gone or half-written during a swap: the next event tells
            changed = False
        if changed:
            log.info("config file changed: reloading")
            await reload()
        await asyncio.sleep(0)
