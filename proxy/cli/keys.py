"""`shardproxy hotkeys` and `shardproxy bigkeys`: a fleet's hot keys and big keys, merged from
each proxy's admin /hotkeys and /bigkeys (proxy/defences/report.py), printed as a table."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from proxy.cli.fleet import TOKEN_ENV, fleet_json
from proxy.defences.report import merge_bigkeys, merge_counts, merge_hotkeys, render

DEFAULT_ADMIN = "127.0.0.1:9380"
HOT_COLUMNS: tuple[str, ...] = ("pool", "key", "rate_per_s", "backend", "backend_share", "error")
BIG_COLUMNS: tuple[str, ...] = ("key", "bytes", "command", "direction")


def add_keys_parsers(sub: Any) -> None:
    for name, what in (("hotkeys", "the most requested keys"), ("bigkeys", "the largest keys")):
        parser = sub.add_parser(
            name,
            help=f"{what} of a fleet of running proxies (from each admin /{name})",
            description="Exit status 1 when a proxy does not answer.",
        )
        parser.add_argument(
            "--admin",
            action="append",
            metavar="ADDR",
            help="admin address host:port of a proxy (repeat for a fleet;"
            f" default {DEFAULT_ADMIN})",
        )
        parser.add_argument("--top", type=int, default=20, help="rows per pool (default 20)")
        parser.add_argument("--json", action="store_true", help="the merged rows as JSON")
        parser.add_argument(
            "--token",
            help=f"admin token (admin.token) sent as a bearer token; default: ${TOKEN_ENV}",
        )


def cmd_keys(args: argparse.Namespace) -> int:
    name = args.command
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    replies = fleet_json(args.admin or [DEFAULT_ADMIN], f"/{name}", token or None)
    failed = [r for r in replies if "error" in r]
    for reply in failed:
        print(f"shardproxy: {reply['admin']}: {reply['error']}", file=sys.stderr)
    answered = [r for r in replies if "error" not in r]
    if name == "hotkeys":
        rows = merge_hotkeys((r.get("hotkeys", []) for r in answered), args.top)
        columns = HOT_COLUMNS
        out: dict[str, Any] = {"hotkeys": rows}
    else:
        rows = merge_bigkeys((r.get("bigkeys", []) for r in answered), args.top)
        columns = BIG_COLUMNS
        out = {"bigkeys": rows, "counts": merge_counts(r.get("counts", []) for r in answered)}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(render(rows, columns))
        if name == "bigkeys" and out["counts"]:
            print()
            print(render(out["counts"], ("command", "direction", "count")))
    return 1 if failed else 0
