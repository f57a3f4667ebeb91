"""What a benchmark run reports: the versions and machine it ran on, per-case medians over the
rounds, and the Markdown tables written to results.md and printed at the end.

Pure apart from `collect_versions`, which asks the binaries and the interpreter; the summary is
computed from the raw per-run records alone, so results.json can be re-rendered later.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.loadgen import REDIS_BENCHMARK
from benchmarks.processes import NUTCRACKER, REDIS_SERVER, REPO

TARGETS = ("direct", "nutcracker", "shardproxy")
MIB_PER_KIB = 1 / 1024


def _output(args: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=10, check=False, cwd=cwd
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (done.stdout + done.stderr).strip()


def _package(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def shardproxy_version(source: Path, rev: str | None) -> str:
    """proxy.__version__ as `python -m proxy` would import it from `source`, and its commit."""
    version = _output([sys.executable, "-c", "import proxy; print(proxy.__version__)"], source)
    if "Traceback" in version:
        version = "unimportable"
    commit = _output(["git", "-C", str(REPO), "rev-parse", "--short", rev or "HEAD"])
    if rev:
        return f"{version} (git {rev} = {commit})"
    dirty = _output(["git", "-C", str(REPO), "status", "--porcelain", "--", "proxy"])
    return f"{version} ({commit}{' + uncommitted changes in proxy/' if dirty else ''})"


def collect_versions(shardproxy: str) -> dict[str, str]:
    redis = _output([REDIS_SERVER, "--version"]).split()
    redis_v = next((w[2:] for w in redis if w.startswith("v=")), " ".join(redis))
    return {
        "redis-server": redis_v,
        "redis-benchmark": _output([REDIS_BENCHMARK, "--version"]).removeprefix("redis-benchmark "),
        "nutcracker": _output([NUTCRACKER, "--version"]).splitlines()[0].removeprefix("This is "),
        "python": platform.python_version(),
        "uvloop": _package("uvloop"),
        "hiredis": _package("hiredis"),
        "shardproxy": shardproxy,
        "kernel": platform.release(),
        "cpu": f"{_cpu_model()}, {os.cpu_count()} logical CPUs",
    }


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _paired_ratio(runs: Sequence[dict[str, Any]], case: str, other: str) -> float | None:
    """Median over rounds of shardproxy's rps / `other`'s in the same round.

    Pairing by round cancels noise that lasts longer than a round (a busy neighbour, a slower
    minute), which a ratio of two medians taken from different rounds would not.
    """
    by_round: dict[int, dict[str, float]] = {}
    for run in runs:
        if run["case"] == case and run["rps"]:
            by_round.setdefault(run["round"], {})[run["target"]] = run["rps"]
    ratios = [
        r["shardproxy"] / r[other] for r in by_round.values() if "shardproxy" in r and other in r
    ]
    return _median(ratios)


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per case: per target, the medians over its rounds of rps, p50, p99, CPU/req."""
    cases: dict[str, dict[str, Any]] = {}
    for run in runs:
        case = cases.setdefault(
            run["case"], {"case": run["case"], "targets": {}, "errors": 0, "failed": 0}
        )
        per = case["targets"].setdefault(
            run["target"], {"rps": [], "p50_ms": [], "p99_ms": [], "cpu_us": []}
        )
        case["errors"] += bool(run["errors"])
        if run["rps"] is None:
            case["failed"] += 1
            continue
        per["rps"].append(run["rps"])
        for key in ("p50_ms", "p99_ms", "cpu_us"):
            if run.get(key) is not None:
                per[key].append(run[key])
    out = []
    for case in cases.values():
        entry: dict[str, Any] = {k: case[k] for k in ("case", "errors", "failed")}
        for target, per in case["targets"].items():
            rps = per["rps"]
            entry[target] = {
                "rounds": len(rps),
                "rps": _median(rps),
                "spread": (max(rps) - min(rps)) / statistics.median(rps) if len(rps) > 1 else None,
                "p50_ms": _median(per["p50_ms"]),
                "p99_ms": _median(per["p99_ms"]),
                "cpu_us_per_request": _median(per["cpu_us"]),
            }
        for other in ("nutcracker", "direct"):
            entry[f"shardproxy/{other}"] = _paired_ratio(runs, case["case"], other)
        out.append(entry)
    return out


def _num(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _throughput(summary: Sequence[dict[str, Any]]) -> list[str]:
    rows = []
    for entry in summary:
        spreads = [
            entry[t]["spread"] for t in TARGETS if entry.get(t, {}).get("spread") is not None
        ]
        flag = " (!)" if entry["errors"] or entry["failed"] else ""
        rows.append(
            [
                f"`{entry['case']}`{flag}",
                *(_num(entry.get(t, {}).get("rps")) for t in TARGETS),
                _num(entry["shardproxy/nutcracker"], "{:.2f}"),
                _num(entry["shardproxy/direct"], "{:.2f}"),
                _num(max(spreads) * 100 if spreads else None, "{:.0f} %"),
            ]
        )
    header = ["case", *TARGETS, "shardproxy / nutcracker", "shardproxy / direct", "spread"]
    return _table(header, rows)


def _latency(summary: Sequence[dict[str, Any]]) -> list[str]:
    rows = []
    for entry in summary:
        cells = [f"`{entry['case']}`"]
        for t in TARGETS:
            per = entry.get(t, {})
            cells.append(
                f"{_num(per.get('p50_ms'), '{:.2f}')} / {_num(per.get('p99_ms'), '{:.2f}')}"
            )
        for t in TARGETS:
            cells.append(_num(entry.get(t, {}).get("cpu_us_per_request"), "{:.1f}"))
        rows.append(cells)
    header = ["case", *(f"{t} p50 / p99 ms" for t in TARGETS)]
    header += [f"{t} CPU µs/req" for t in TARGETS]
    return _table(header, rows)


def _mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib * MIB_PER_KIB:.1f}"


def _memory(memory: dict[str, Any]) -> list[str]:
    names = {
        "idle": "idle, before the benchmarks",
        "idle_clients": "1,000 idle clients (each did one PING)",
        "load_sampled_peak": "1,000 clients `GET -P 16`: highest of samples every 0.1 s",
        "load_peak": "peak so far (VmHWM) at the end of the 1,000-client run",
        "after_load": "1,000-client run over, 1 s later",
        "after_all": "idle, after every benchmark",
    }
    rows = []
    for key, label in names.items():
        cells = [label]
        for target in ("shardproxy", "nutcracker"):
            cells.append(_mib(memory.get(target, {}).get(key)))
        rows.append(cells)
    rps = [memory.get(t, {}).get("load_rps") for t in ("shardproxy", "nutcracker")]
    rows.append(["requests/s of the 1,000-client run", *(_num(v) for v in rps)])
    return _table(["VmRSS (MiB)", "shardproxy", "nutcracker"], rows)


def _workers_text(workers: int) -> str:
    if workers <= 1:
        return "shardproxy runs as one process; "
    return (
        f"shardproxy runs {workers} worker processes under a supervisor (CPU and memory: "
        "their sum); "
    )


def render_markdown(results: dict[str, Any]) -> str:
    params = results["params"]
    lines = [
        f"Run {results['started']} ({results['mode']}, {results['rounds_done']} round(s), "
        f"{results['duration_s']:.0f} s), load average {results['loadavg_start']} at start, "
        f"{results['loadavg_end']} at the end.",
        "",
        f"redis-benchmark -c {params['clients']} -r {params['keyspace']} on 127.0.0.1; both "
        f"proxies hash with {params.get('hash', 'fnv1a_64')} (ketama, hash tag {{}}); "
        f"{_workers_text(params.get('workers', 1))}"
        "requests/s are medians over the rounds; a ratio is the median of the per-round ratios; "
        "spread is the largest (max - min) / median of any target in that row.",
        "",
        *_throughput(results["summary"]),
        "",
        "Latency is redis-benchmark's, median over the rounds. CPU is user + system time of the "
        "target process per request (direct: the redis-server; proxies: the proxy alone).",
        "",
        *_latency(results["summary"]),
        "",
        *_memory(results["memory"]),
        "",
        "Versions: " + "; ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".",
    ]
    problems = results["problems"]
    if problems:
        lines += ["", "Problems seen (a row with a failed or erroring run is marked (!)):", ""]
        lines += ["- " + p.strip().replace("\n", "\n  ") for p in problems]
    return "\n".join(lines) + "\n"
