"""Merging hot-key and big-key reports (admin /hotkeys, /bigkeys) of several proxies or workers,
and rendering them as tables for `shardproxy hotkeys` and `shardproxy bigkeys`.

Rates add up across proxies (each saw its own share of the traffic); a key's share of its
backend's load is recomputed from the summed sampled counts, not averaged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def merge_hotkeys(reports: Iterable[Sequence[dict[str, Any]]], top: int) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    loads: dict[tuple[str, str], float] = {}  # (admin, backend) -> sampled load, counted once
    for i, report in enumerate(reports):
        for row in report:
            ident = (str(row.get("pool", "")), str(row.get("key", "")))
            merged = rows.setdefault(
                ident, {**row, "rate_per_s": 0.0, "count": 0, "backend_count": 0, "error": 0}
            )
            merged["rate_per_s"] = round(merged["rate_per_s"] + float(row.get("rate_per_s", 0)), 2)
            merged["count"] += int(row.get("count", 0))
            merged["error"] += int(row.get("error", 0))
            loads[(str(i), str(row.get("backend", "")))] = float(row.get("backend_count", 0))
    for (_, backend), load in loads.items():
        for row in rows.values():
            if row.get("backend") == backend:
                row["backend_count"] += load
    for row in rows.values():
        load = row["backend_count"]
        row["backend_share"] = round(row["count"] / load, 4) if load else 0.0
    ranked = sorted(rows.values(), key=lambda r: (r["pool"], -r["rate_per_s"]))
    out: list[dict[str, Any]] = []
    per_pool: dict[str, int] = {}
    for row in ranked:
        per_pool[row["pool"]] = per_pool.get(row["pool"], 0) + 1
        if per_pool[row["pool"]] <= top:
            out.append(row)
    return out


def merge_bigkeys(reports: Iterable[Sequence[dict[str, Any]]], top: int) -> list[dict[str, Any]]:
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for report in reports:
        for row in report:
            ident = (str(row.get("key", "")), str(row.get("direction", "")))
            if ident not in best or int(row.get("bytes", 0)) > int(best[ident].get("bytes", 0)):
                best[ident] = dict(row)
    return sorted(best.values(), key=lambda r: -int(r.get("bytes", 0)))[:top]


def merge_counts(reports: Iterable[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    counts: dict[tuple[str, str], int] = {}
    for report in reports:
        for row in report:
            ident = (str(row.get("command", "")), str(row.get("direction", "")))
            counts[ident] = counts.get(ident, 0) + int(row.get("count", 0))
    return [{"command": c, "direction": d, "count": n} for (c, d), n in sorted(counts.items())]


def render(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    table = [tuple(columns)] + [tuple(str(r.get(c, "")) for c in columns) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    )
