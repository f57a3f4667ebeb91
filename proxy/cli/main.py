"""`shardproxy` command line: serve, check (and the migration tools as they land).

Every subcommand prints one clear line and exits non-zero on bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from proxy import __version__
from proxy.build_info import BUILD
from proxy.cli.embedded import EmbeddedError, LocalBackends
from proxy.cli.fleet import TOKEN_ENV, fleet_ok, fleet_status, render_table
from proxy.cli.keys import add_keys_parsers, cmd_keys
from proxy.commands.users import compile_users
from proxy.config.reader import read_config_file
from proxy.config.schema import MAX_WORKERS, ConfigError, ProxyConfig, load_config, parse_config
from proxy.net.tls import describe_tls, load_tls
from proxy.routing.topology import build_pool
from proxy.server.logformat import setup_logging

log = logging.getLogger("shardproxy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardproxy", description="Redis sharding proxy")
    version = f"shardproxy {__version__} ({BUILD})"
    parser.add_argument("--version", action="version", version=version)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    src = serve.add_mutually_exclusive_group(required=True)
    src.add_argument("-c", "--config", help="YAML config file")
    src.add_argument("--local", type=int, metavar="N", help="spawn N local redis-server backends")
    serve.add_argument("--watch", action="store_true", help="reload when the config file changes")
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help=f"worker processes sharing the listen port, 1..{MAX_WORKERS} (overrides the"
        " config's workers, also on reload)",
    )
    serve.add_argument("--listen", help="override listen address (host:port)")
    serve.add_argument("--admin", help="override admin address (host:port)")
    serve.add_argument("--log-format", choices=["text", "json"], default=None)
    serve.add_argument("--log-level", default=None)
    check = sub.add_parser("check", help="validate a config and show its rings")
    check.add_argument("-c", "--config", required=True)
    check.add_argument("--json", action="store_true", help="machine-readable output")
    acl = sub.add_parser(
        "acl",
        help="print the ACL rules the proxy's backend user should have",
        description="Rules for the backend user, from the command table and the config"
        " (allow_flush): scripts run commands the proxy cannot see, so the backends must refuse"
        " what the proxy refuses. Create the user on every backend with --user's output.",
    )
    acl.add_argument("-c", "--config", required=True)
    acl.add_argument(
        "--user", metavar="NAME", help="print a whole ACL SETUSER NAME command (password: PASSWORD)"
    )
    acl.add_argument("--json", action="store_true", help="rules, allowed and denied as JSON")
    add_migration_parsers(sub)
    add_status_parser(sub)
    add_keys_parsers(sub)
    return parser


def add_migration_parsers(sub: Any) -> None:
    """plan, backfill, verify, cleanup: the migration jobs in the foreground (cli/console.py)."""
    plan = sub.add_parser(
        "plan",
        help="show which share of the keys moves, per source and target server",
        description="Needs a migration block. Prints the share of the hash space that changes"
        " owner per source -> target server (exact ring arithmetic), then samples real keys"
        " when the source servers answer.",
    )
    plan.add_argument("-c", "--config", required=True)
    plan.add_argument(
        "--sample", type=int, default=1000, metavar="N", help="keys sampled per source server"
    )
    backfill = sub.add_parser(
        "backfill",
        help="copy the moved keys to the target pool now, with a progress bar",
        description="The backfill the proxy runs in phase backfill: same lease (one runner per"
        " fleet), checkpoints (an interrupted run resumes) and gate. Exit 1 if it fails, if"
        " another process holds the lease, or if the final verify leaves mismatches. Run from"
        " here it has no per-key write fence: prefer phase backfill when the proxies take writes.",
    )
    backfill.add_argument("-c", "--config", required=True)
    backfill.add_argument(
        "--restart", action="store_true", help="forget checkpoints and the gate; start over"
    )
    verify = sub.add_parser(
        "verify",
        help="compare every moved key between its source and target owner",
        description="Compares by content (not encoding) and TTL within"
        " migration.verify_ttl_tolerance_ms. Exit 1 when it finds a difference (with --repair:"
        " when one is left).",
    )
    verify.add_argument("-c", "--config", required=True)
    verify.add_argument(
        "--repair",
        action="store_true",
        help="copy differing keys from the pool that answers reads in the phase"
        " (source before cut-read, target from cut-read on); delete keys that came back",
    )
    cleanup = sub.add_parser(
        "cleanup",
        help="delete keys a server kept from the old layout but no longer owns",
        description="Runs only in phase retire (cleans the target pool), or with no migration"
        " block and --from-pool OLD naming the pool the keys came from, still defined in the"
        " file (cleans the route pool). Keys under the reserved prefix __shardproxy: are kept.",
    )
    cleanup.add_argument("-c", "--config", required=True)
    cleanup.add_argument("--dry-run", action="store_true", help="only count, per server")
    cleanup.add_argument("--from-pool", metavar="OLD", help="after the migration block is gone")


def add_status_parser(sub: Any) -> None:
    """status: one table for a fleet of running proxies (proxy/cli/fleet.py)."""
    status = sub.add_parser(
        "status",
        help="one table for a fleet of running proxies (from each admin /status)",
        description="Exit status 1 when a proxy does not answer, the fleet runs more than one"
        " config, or a backend is down.",
    )
    status.add_argument(
        "--admin",
        action="append",
        metavar="ADDR",
        help="admin address host:port of a proxy (repeat for a fleet; default 127.0.0.1:9380)",
    )
    status.add_argument("--json", action="store_true", help="the raw /status of every proxy")
    status.add_argument(
        "--token",
        help=f"admin token (admin.token) sent as a bearer token; default: ${TOKEN_ENV}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "check":
            return cmd_check(args)
        if args.command == "acl":
            return cmd_acl(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command in ("hotkeys", "bigkeys"):
            return cmd_keys(args)
        if args.command in MIGRATION_COMMANDS:
            return MIGRATION_COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"shardproxy: invalid config: {exc}", file=sys.stderr)
        return 2
    except EmbeddedError as exc:
        print(f"shardproxy: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


def cmd_status(args: argparse.Namespace) -> int:
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    rows = fleet_status(args.admin or ["127.0.0.1:9380"], token or None)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(render_table(rows))
    return 0 if fleet_ok(rows) else 1


def cmd_serve(args: argparse.Namespace) -> int:
    problem = _check_serve_args(args)
    if problem:
        print(f"shardproxy: {problem}", file=sys.stderr)
        return 2
    local: LocalBackends | None = None
    try:
        if args.local is not None:
            local = LocalBackends(args.local)
            if args.listen:
                local.listen = args.listen
            if args.admin:
                local.admin = args.admin
            local.start()
            text = local.config_text()
            config = parse_config(text, "<local>")
            path = None
        else:
            text = read_config_file(args.config).text  # as the reloads will read it
            config = parse_config(text, args.config)
            path = args.config
        compile_users(config.client)  # ConfigError: a rule the command table does not know
        if args.workers is not None:
            config = replace(config, workers=args.workers)
        if config.workers > 1 and config.listen.port == 0:
            print("shardproxy: workers > 1 need a fixed listen port, not 0", file=sys.stderr)
            return 2
        load_tls(config)  # every certificate usable, before anything starts (ConfigError)
        log_format = args.log_format or config.log_format
        setup_logging(log_format, args.log_level or config.log_level)
        if config.client.users and config.client.password is None:
            log.warning(
                "client.users is set but client.password is not: every client is the default"
                " user, allowed everything, until it AUTHs as another user"
            )
        if local is not None:
            ports = ", ".join(str(p) for p in local.ports)
            log.info("embedded backends: redis-server on 127.0.0.1 ports %s", ports)
        if config.workers > 1:
            return _run_workers(config, text, path, args, log_format)
        return _run(config, text, path, args.watch, args.workers)
    finally:
        if local is not None:
            local.stop()


def _check_serve_args(args: argparse.Namespace) -> str:
    """The problem with serve's arguments, "" when none."""
    if args.local is not None and not 1 <= args.local <= 64:
        return "--local takes 1..64 backends"
    if args.workers is not None and not 1 <= args.workers <= MAX_WORKERS:
        return f"--workers takes 1..{MAX_WORKERS} processes"
    if args.local is None and (args.listen or args.admin):
        return "--listen/--admin only go with --local"
    return ""


def _run(config: ProxyConfig, text: str, path: str | None, watch: bool, workers: int | None) -> int:
    import uvloop

    from proxy.server.aclcheck import AclCheckError
    from proxy.server.dbcheck import DatabasesError
    from proxy.server.server import ProxyServer

    async def serve() -> None:
        server = ProxyServer(config, text, path)
        server.watch = watch
        server.workers_override = workers
        await server.start()
        server.install_signal_handlers()
        await server.serve_until_stopped()

    try:
        uvloop.run(serve())
    except OSError as exc:
        print(f"shardproxy: cannot serve: {exc}", file=sys.stderr)
        return 1
    except (AclCheckError, DatabasesError) as exc:
        print(f"shardproxy: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_workers(
    config: ProxyConfig, text: str, path: str | None, args: argparse.Namespace, log_format: str
) -> int:
    """workers > 1: this process supervises them (proxy/workers/supervisor.py)."""
    import uvloop

    from proxy.server.aclcheck import AclCheckError
    from proxy.server.dbcheck import DatabasesError
    from proxy.workers.supervisor import Supervisor

    async def supervise() -> int:
        supervisor = Supervisor(
            config,
            text,
            path,
            workers_override=args.workers,
            watch=args.watch,
            log_format=log_format,
            log_level=args.log_level or config.log_level,
        )
        return await supervisor.run()

    try:
        return uvloop.run(supervise())
    except (AclCheckError, DatabasesError) as exc:  # checked once, before any worker starts
        print(f"shardproxy: {exc}", file=sys.stderr)
        return 1


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    compile_users(config.client)
    load_tls(config)  # the certificate, key and CA files must be usable too
    if args.json:
        print(json.dumps(describe(config), indent=2))
        return 0
    print(f"config {args.config}: ok")
    print(f"listen {config.listen}  admin {config.admin or 'off'}  workers {config.workers}")
    for line in describe_tls(config):
        print(line)
    migration = config.migration
    if migration:
        phase = f"{migration.phase}, pool {config.migration_source} -> pool {migration.to}"
    else:
        phase = "none"
    print(f"route pool: {config.route}   migration: {phase}")
    if config.routes:
        print(f"prefix routes (longest prefix wins; every other key -> pool {config.route}):")
        width = max(len(repr(r.prefix)) for r in config.routes)
        for r in config.routes:
            follows = "  (follows the migration)" if r.pool == config.migration_source else ""
            print(f"  {r.prefix!r:<{width}} -> pool {r.pool}{follows}")
    for pool in describe(config)["pools"]:
        print(f"\npool {pool['name']}: hash {pool['hash']}, {pool['distribution']}, ", end="")
        print(f"hash_tag {pool['hash_tag']!r}")
        for server in pool["servers"]:
            bar = "#" * round(server["share"] * 40)
            print(
                f"  {server['name']:<12} {server['addr']:<22} w{server['weight']:<3} "
                f"{server['share'] * 100:6.2f}%  {bar}"
            )
    return 0


def cmd_acl(args: argparse.Namespace) -> int:
    from proxy.commands.acl import build_rules

    user = args.user
    if user is not None and (not user or any(c.isspace() or c in "<>" for c in user)):
        print(f"shardproxy acl: --user {user!r} is not a usable ACL user name", file=sys.stderr)
        return 2
    config = load_config(args.config)
    rules = build_rules(config.allow_flush, bool(config.allow_config_set))
    if args.json:
        out: dict[str, Any] = {"rules": list(rules.rules()), "allowed": list(rules.allowed)}
        out |= {"denied": list(rules.denied), "allow_flush": config.allow_flush}
        if user is not None:
            out["setuser"] = rules.setuser(user)
        print(json.dumps(out, indent=2))
    else:
        print(rules.line() if user is None else rules.setuser(user))
    return 0


def describe(config: ProxyConfig) -> dict[str, Any]:
    pools = []
    for pool in config.pools.values():
        shares = build_pool(pool).ring.shares()
        pools.append(
            {
                "name": pool.name,
                "hash": pool.hash,
                "distribution": pool.distribution,
                "hash_tag": pool.hash_tag,
                "servers": [
                    {"name": s.name or s.addr, "addr": s.addr, "weight": s.weight, "share": share}
                    for s, share in zip(pool.servers, shares, strict=True)
                ],
            }
        )
    migration = config.migration
    return {
        "workers": config.workers,
        "tls": describe_tls(config),
        "route": config.route,
        "phase": migration.phase if migration else None,
        "migration_from": config.migration_source,
        "migration_to": migration.to if migration else None,
        "routes": [{"prefix": r.prefix, "pool": r.pool} for r in config.routes],
        "pools": pools,
    }


def cmd_plan(args: argparse.Namespace) -> int:
    from proxy.cli import console

    if args.sample < 0:
        print("shardproxy plan: --sample must be >= 0", file=sys.stderr)
        return 2
    return console.run_plan(load_config(args.config), args.sample)


def cmd_backfill(args: argparse.Namespace) -> int:
    from proxy.cli import console

    return console.run_backfill(load_config(args.config), args.restart)


def cmd_verify(args: argparse.Namespace) -> int:
    from proxy.cli import console

    return console.run_verify(load_config(args.config), args.repair)


def cmd_cleanup(args: argparse.Namespace) -> int:
    from proxy.cli import console

    return console.run_cleanup(load_config(args.config), args.dry_run, args.from_pool)


MIGRATION_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "plan": cmd_plan,
    "backfill": cmd_backfill,
    "verify": cmd_verify,
    "cleanup": cmd_cleanup,
}
