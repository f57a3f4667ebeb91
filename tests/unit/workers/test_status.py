"""proxy.workers.status: the supervisor's merging of worker reports (backends, limits, memory,
histograms) into one /status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.net.metrics import LATENCY_BUCKETS_S
from proxy.workers.status import combine_reasons, merge_backends, merge_status


def row(up: bool, inflight: int, buckets: list[int], reason: str = "") -> dict[str, Any]:
    return {"name": "r1", "addr": "127.0.0.1:7001", "up": up, "reason": reason,
            "inflight": inflight, "requests": sum(buckets),
            "errors": {"timeout": 1, "connection": 0, "reply": 2}, "buckets": buckets}  # fmt: skip


def buckets(**at: int) -> list[int]:
    """Counts per bucket index, e.g. buckets(b0=3, b5=1)."""
    out = [0] * (len(LATENCY_BUCKETS_S) + 1)
    for name, n in at.items():
        out[int(name[1:])] = n
    return out


def test_combine_reasons() -> None:
    assert combine_reasons([(0, "bad"), (1, "bad")], 2) == "bad"
    assert combine_reasons([(0, "a"), (1, "b")], 2) == "worker 0: a; worker 1: b"
    assert combine_reasons([(1, "b")], 2, "others fine") == "worker 1: b (others fine)"
    assert combine_reasons([(1, "b")], 2) == "worker 1: b"


def test_merge_backends_sums_and_merges_histograms() -> None:
    one = row(True, 2, buckets(b0=98))
    two = row(False, 3, buckets(b0=1, b10=1), reason="connection refused")
    [merged] = merge_backends([[one], [two]])
    assert merged["up"] is False and merged["reason"] == "connection refused"
    assert (merged["inflight"], merged["requests"]) == (5, 100)
    assert merged["errors"] == {"timeout": 2, "connection": 0, "reply": 4}
    assert merged["p50_ms"] == LATENCY_BUCKETS_S[0] * 1000
    assert merged["p99_ms"] == LATENCY_BUCKETS_S[0] * 1000  # 99 of 100 in the first bucket
    assert "buckets" not in merged


@dataclass
class View:
    index: int
    pid: int
    restarts: int = 0
    started: float = 1.0


def test_merge_sums_limits_memory_and_backend_events() -> None:
    def report(max_clients: int, held: int, busy: int, local: int) -> dict[str, Any]:
        backend = row(True, 0, buckets()) | {"busy_events": busy, "local_resource_failures": local,
                                             "acl": None}  # fmt: skip
        return {"clients": 1, "max_clients": max_clients, "client_memory_bytes": held,
                "clients_throttled": 1, "max_memory_bytes": 250, "backends": [backend],
                "generation": 1, "ready": True, "backfill": {"state": "idle"}}  # fmt: skip

    reports = [report(1000, 40, 2, 0), report(900, 2, 1, 5)]
    status = merge_status({}, [View(0, 10), View(1, 11)], reports)
    assert (status["max_clients"], status["client_memory_bytes"]) == (1900, 42)
    assert (status["clients_throttled"], status["max_memory_bytes"]) == (2, 500)
    [backend] = status["backends"]
    assert (backend["busy_events"], backend["local_resource_failures"]) == (3, 5)
    assert "acl" in backend
    assert [(w["max_clients"], w["client_memory_bytes"]) for w in status["workers"]] == [
        (1000, 40), (900, 2),
    ]  # fmt: skip


def test_merge_status_with_a_worker_not_answering() -> None:
    report = {"clients": 4, "backends": [row(True, 0, buckets())], "generation": 3,
              "ready": True, "backfill": {"state": "idle"}}  # fmt: skip
    status = merge_status({"generation": 3}, [View(0, 10), View(1, 11, restarts=2)], [None, report])
    assert status["clients"] == 4 and status["generation"] == 3
    assert status["backfill"]["state"].startswith("unknown")
    assert [w["up"] for w in status["workers"]] == [False, True]
    assert status["workers"][1]["restarts"] == 2 and status["workers"][1]["clients"] == 4
