"""The supervisor's /status: its workers' reports merged into the shape of one proxy's /status
(so `shardproxy status` reads either), plus a `workers` list.

Sums where a quantity adds up (clients, client limits, memory held and budgets, in-flight,
requests, errors, busy and local-resource events, latency buckets); a backend is up only if every
worker reaches it; the backfill is worker 0's, the one that runs it. The backend ACL check is the
supervisor's own (workers do not run it): it fills each backend's `acl`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

from proxy.net.metrics import BACKEND_ERROR_KINDS, FastHistogram

SUMMED = ("clients", "max_clients", "client_memory_bytes", "clients_throttled", "max_memory_bytes")
BACKEND_SUMMED = ("inflight", "requests", "busy_events", "local_resource_failures")
PER_WORKER = ("clients", "max_clients", "client_memory_bytes", "max_memory_bytes")
UNKNOWN_BACKFILL = {"state": "unknown (worker 0 is not answering)", "scanned": 0, "copied": 0,
                    "skipped": 0, "failed": 0, "progress": 0.0}  # fmt: skip


class WorkerView(Protocol):
    @property
    def index(self) -> int: ...

    @property
    def pid(self) -> int: ...

    @property
    def restarts(self) -> int: ...

    @property
    def started(self) -> float: ...


def merge_status(
    base: dict[str, Any],
    workers: Sequence[WorkerView],
    reports: Sequence[dict[str, Any] | None],
) -> dict[str, Any]:
    answered = [r for r in reports if r is not None]
    status = dict(base)
    status["backfill"] = reports[0]["backfill"] if reports[0] else dict(UNKNOWN_BACKFILL)
    for key in SUMMED:
        status[key] = sum(int(r.get(key, 0)) for r in answered)
    status["backends"] = merge_backends([r["backends"] for r in answered])
    now = time.monotonic()
    status["workers"] = [
        {
            "index": w.index,
            "pid": w.pid,
            "up": r is not None,
            "ready": bool(r and r["ready"]),
            "restarts": w.restarts,
            "uptime_s": round(now - w.started, 3) if r is not None else 0.0,
            "generation": r["generation"] if r else None,
            **{key: int(r.get(key, 0)) if r else 0 for key in PER_WORKER},
            "backfill": r["backfill"]["state"] if r else None,  # runs in worker 0 only
        }
        for w, r in zip(workers, reports, strict=True)
    ]
    return status


def merge_backends(per_worker: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    latency: dict[str, FastHistogram] = {}
    for rows in per_worker:
        for row in rows:
            name = row["name"]
            into = merged.get(name)
            if into is None:
                into = merged[name] = {
                    "name": name, "addr": row["addr"], "up": True, "reason": None, "acl": None,
                    **dict.fromkeys(BACKEND_SUMMED, 0),
                    "errors": dict.fromkeys(BACKEND_ERROR_KINDS, 0),
                }  # fmt: skip
                latency[name] = FastHistogram()
            into["up"] = into["up"] and bool(row["up"])
            into["reason"] = into["reason"] or row["reason"]
            for key in BACKEND_SUMMED:
                into[key] += int(row.get(key, 0))
            for kind in BACKEND_ERROR_KINDS:
                into["errors"][kind] += int(row["errors"][kind])
            hist = latency[name]
            hist.buckets = [a + int(b) for a, b in zip(hist.buckets, row["buckets"], strict=True)]
    for name, into in merged.items():
        into["p50_ms"] = latency[name].quantile(0.5) * 1000
        into["p99_ms"] = latency[name].quantile(0.99) * 1000
    return list(merged.values())


def combine_reasons(reasons: list[tuple[int, str]], asked: int, others: str = "") -> str:
    """One line from the reasons (refusals, not ready) some of `asked` workers gave: the reason
    itself when every worker gave the same one, else each worker's, then `others` when some
    workers gave none."""
    distinct = {reason for _, reason in reasons}
    if len(reasons) == asked and len(distinct) == 1:
        return distinct.pop()
    each = "; ".join(f"worker {index}: {reason}" for index, reason in reasons)
    return f"{each} ({others})" if others and len(reasons) < asked else each
