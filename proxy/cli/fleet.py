"""`shardproxy status`: one table for a fleet of proxies, from each one's admin `/status`.

Flags proxies whose config hash differs from the fleet's most common one, and proxies that do not
answer, so a half-rolled config or a stuck reload shows at a glance.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

FETCH_TIMEOUT_S = 3.0
TOKEN_ENV = "SHARDPROXY_ADMIN_TOKEN"  # the admin token `status` sends unless --token is given


def fetch_status(
    addr: str, token: str | None = None, timeout_s: float = FETCH_TIMEOUT_S
) -> dict[str, Any]:
    """One proxy's /status; with `token`, sent as `Authorization: Bearer` (admin.token)."""
    return fetch_json(addr, "/status", token, timeout_s)


def fetch_json(
    addr: str, path: str, token: str | None = None, timeout_s: float = FETCH_TIMEOUT_S
) -> dict[str, Any]:
    """GET `path` of a proxy's admin port: its JSON object, with "admin" (or "error") added;
    with `token`, sent as `Authorization: Bearer` (admin.token)."""
    url = addr if addr.startswith("http") else f"http://{addr}"
    request = urllib.request.Request(f"{url.rstrip('/')}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            data = json.loads(resp.read())
    except (OSError, urllib.error.URLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return {"admin": addr, "error": str(reason)}
    if not isinstance(data, dict):
        return {"admin": addr, "error": f"not a shardproxy {path} reply"}
    data["admin"] = addr
    return data


def fleet_status(addrs: list[str], token: str | None = None) -> list[dict[str, Any]]:
    return fleet_json(addrs, "/status", token)


def fleet_json(addrs: list[str], path: str, token: str | None = None) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(addrs)))) as pool:
        return list(pool.map(lambda addr: fetch_json(addr, path, token), addrs))


def render_table(rows: list[dict[str, Any]]) -> str:
    hashes = Counter(r.get("config_hash") for r in rows if "error" not in r)
    common = hashes.most_common(1)[0][0] if hashes else None
    header = ("admin", "gen", "config", "phase", "backfill", "backends", "clients", "note")
    lines = [header]
    for r in rows:
        if "error" in r:
            lines.append((r["admin"], "-", "-", "-", "-", "-", "-", f"UNREACHABLE: {r['error']}"))
            continue
        backends = r.get("backends", [])
        up = sum(1 for b in backends if b.get("up"))
        backfill = r.get("backfill") or {}
        progress = (
            f"{backfill.get('state', 'idle')} {100 * float(backfill.get('progress', 0)):.0f}%"
        )
        note = "" if r.get("config_hash") == common else "CONFIG DIFFERS"
        down = [b["name"] for b in backends if not b.get("up")]
        if down:
            note = (note + " down: " + ",".join(down)).strip()
        lines.append(
            (
                r["admin"],
                str(r.get("generation", "?")),
                str(r.get("config_hash", "?")),
                str(r.get("phase", "?")),
                progress,
                f"{up}/{len(backends)} up",
                str(r.get("clients", "?")),
                note,
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in lines
    )


def fleet_ok(rows: list[dict[str, Any]]) -> bool:
    """True when every proxy answered, all on one config, with every backend up."""
    if any("error" in r for r in rows):
        return False
    if len({r.get("config_hash") for r in rows}) > 1:
        return False
    return all(b.get("up") for r in rows for b in r.get("backends", []))
