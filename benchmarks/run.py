"""End-to-end benchmark: redis-benchmark against one redis-server (direct, the reference),
nutcracker and shardproxy over the same three backends, plus shardproxy's resident memory idle,
with 1,000 idle clients and under 1,000 pipelining clients.

    python benchmarks/run.py [--quick] [--rounds N] [--out DIR]

Writes results.json, results.md, the generated configs and every process's log into --out
(default benchmarks/results/<timestamp>/) and prints the Markdown table. Everything listens on
127.0.0.1; every process started is stopped at the end, on error and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `proxy` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import loadgen, report
from benchmarks.processes import (
    REPO,
    HarnessError,
    Proc,
    ProcessGroup,
    cpu_seconds,
    export_source,
    proc_status_kib,
    start_backends,
    start_nutcracker,
    start_shardproxy,
)

CLIENTS = 50
KEYSPACE = 100_000  # -r: keys key:000000000000 .. key:000000099999, all populated first
SMALL_BYTES = 64
BIG_BYTES = 100_000
BIG_KEYSPACE = 1_000  # big:000000000000 .. big:000000000999, 100 KB each
IDLE_CLIENTS = 1_000
LOAD_CLIENTS = 1_000
LOAD_PIPELINE = 16
MAX_RESTARTS = 2  # per proxy, after a crash


@dataclass(frozen=True)
class Settings:
    rounds: int
    requests_p1: int  # -n for pipeline 1, 64-byte values
    requests_p16: int  # -n for pipeline 16
    requests_big: int  # -n for GET of 100 KB values
    requests_load: int  # -n for the 1,000-client memory run
    budget_s: float  # the whole run at the default rounds; what does not fit is skipped, reported
    run_timeout_s: float  # one redis-benchmark invocation


FULL = Settings(5, 80_000, 400_000, 15_000, 400_000, budget_s=320, run_timeout_s=60)
QUICK = Settings(1, 30_000, 200_000, 6_000, 150_000, budget_s=75, run_timeout_s=20)


@dataclass(frozen=True)
class Case:
    test: str  # GET or SET
    pipeline: int
    data_bytes: int
    requests: int
    keyspace: int = KEYSPACE
    command: tuple[str, ...] = ()  # a custom command line instead of `-t test`

    @property
    def label(self) -> str:
        return f"{self.test} -P {self.pipeline} -d {self.data_bytes}"


def build_cases(settings: Settings) -> list[Case]:
    cases = []
    for pipeline, requests in ((1, settings.requests_p1), (16, settings.requests_p16)):
        for test in ("SET", "GET"):
            cases.append(Case(test, pipeline, SMALL_BYTES, requests))
    big = ("GET", "big:__rand_int__")
    cases.append(Case("GET", 1, BIG_BYTES, settings.requests_big, BIG_KEYSPACE, big))
    return cases


def small_keys() -> list[bytes]:
    return [b"key:%012d" % i for i in range(KEYSPACE)]  # redis-benchmark's __rand_int__ form


def big_keys() -> list[bytes]:
    return [b"big:%012d" % i for i in range(BIG_KEYSPACE)]


class OutOfTime(Exception):
    """The run's time budget is spent: the matrix stops where it is."""


class Bench:
    """One run: owns the processes, the raw records and the problems seen."""

    def __init__(
        self,
        settings: Settings,
        rounds: int,
        out_dir: Path,
        work_dir: Path,
        source: Path,
        hash_name: str,
        workers: int = 1,
    ) -> None:
        self.settings = settings
        self.hash_name = hash_name
        self.workers = workers  # shardproxy's worker processes (1: the plain single process)
        self.source = source  # the directory whose proxy/ package is benchmarked
        # More rounds than the default get proportionally more time.
        self.budget_s = settings.budget_s * max(1.0, rounds / settings.rounds)
        self.out_dir = out_dir
        self.work_dir = work_dir
        self.group = ProcessGroup(out_dir / "logs")
        self.procs: dict[str, Proc] = {}
        self.backends: list[Proc] = []
        self.restarts = {"nutcracker": 0, "shardproxy": 0}
        self.runs: list[dict[str, Any]] = []
        self.memory: dict[str, dict[str, Any]] = {}
        self.problems: list[str] = []
        self.rounds_done = 0
        self.started = time.monotonic()

    def log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:5.0f} s] {text}", file=sys.stderr, flush=True)

    def problem(self, text: str) -> None:
        self.problems.append(text)
        self.log(f"PROBLEM: {text}")

    # -- setup ---------------------------------------------------------------------------
    def start(self) -> None:
        self.backends = start_backends(self.group, self.work_dir)
        self.procs["direct"] = self.backends[0]
        self.procs["nutcracker"] = start_nutcracker(
            self.group, self.out_dir, self.backends, self.hash_name
        )
        self.procs["shardproxy"] = self.start_proxy("shardproxy")
        ports = {name: proc.port for name, proc in self.procs.items()}
        self.log(f"started: backends {[b.port for b in self.backends]}, {ports}")

    def start_proxy(self, target: str) -> Proc:
        if target == "nutcracker":
            return start_nutcracker(self.group, self.out_dir, self.backends, self.hash_name)
        return start_shardproxy(
            self.group, self.out_dir, self.backends, self.hash_name, self.source, self.workers
        )

    def populate(self) -> None:
        """Every key the runs read, through nutcracker (the pool) and on the direct backend."""
        small, big = small_keys(), big_keys()
        for target in ("nutcracker", "direct"):
            port = self.procs[target].port
            loadgen.set_keys(port, small, b"x" * SMALL_BYTES)
            loadgen.set_keys(port, big, b"x" * BIG_BYTES, batch=20)
        sample = random.Random(1).sample(small, 500) + big[:20]
        replies = loadgen.get_keys(self.procs["shardproxy"].port, sample)
        wrong = [
            key
            for key, reply in zip(sample, replies, strict=True)
            if reply != b"x" * (BIG_BYTES if key.startswith(b"big:") else SMALL_BYTES)
        ]
        if wrong:
            self.problem(
                f"shardproxy GET of {len(wrong)} of {len(sample)} keys SET through nutcracker "
                f"did not return the value (first: {wrong[0]!r}): the rings differ"
            )
        self.log(
            f"populated {len(small)} + {len(big)} keys; {len(sample)} read back via shardproxy"
        )

    # -- memory --------------------------------------------------------------------------
    def rss_kib(self, target: str) -> int | None:
        return proc_status_kib(self.procs[target].pid, tree=True).get("VmRSS")

    def measure_memory(self) -> None:
        targets = ("shardproxy", "nutcracker")
        for target in targets:
            self.memory[target] = {"idle": self.rss_kib(target)}
        for target in targets:
            socks = loadgen.open_idle_clients(self.procs[target].port, IDLE_CLIENTS)
            try:
                time.sleep(1.0)
                self.memory[target]["idle_clients"] = self.rss_kib(target)
            finally:
                loadgen.close_all(socks)
        for target in targets:
            self.measure_load_memory(target)
            self.check_alive(target, "the 1,000-client run")
        self.log(f"memory (KiB): {self.memory}")

    def measure_load_memory(self, target: str) -> None:
        proc = self.procs[target]
        samples: list[int] = []

        def sample() -> None:
            rss = proc_status_kib(proc.pid, tree=True).get("VmRSS")
            if rss is not None:
                samples.append(rss)

        args = loadgen.benchmark_args(
            proc.port,
            clients=LOAD_CLIENTS,
            requests=self.settings.requests_load,
            pipeline=LOAD_PIPELINE,
            data_bytes=SMALL_BYTES,
            keyspace=KEYSPACE,
            tests=("GET",),
        )
        out = loadgen.run_benchmark(args, self.settings.run_timeout_s, sample)
        mem = self.memory[target]
        mem["load_sampled_peak"] = max(samples, default=None)
        mem["load_peak"] = proc_status_kib(proc.pid, tree=True).get("VmHWM")
        row = next(iter(out.rows.values()), None)
        mem["load_rps"] = row.rps if row else None
        mem["load_errors"] = out.errors
        if out.errors:
            self.problem(f"1,000-client GET -P 16 on {target}: {'; '.join(out.errors[:5])}")
        time.sleep(1.0)
        mem["after_load"] = self.rss_kib(target)

    # -- the matrix ----------------------------------------------------------------------
    def check_alive(self, target: str, during: str) -> None:
        proc = self.procs[target]
        if proc.alive():
            return
        self.problem(f"{target} died during {during}: {proc.describe_exit()}")
        if target not in self.restarts or self.restarts[target] >= MAX_RESTARTS:
            raise HarnessError(f"{target} is gone and will not be restarted")
        self.restarts[target] += 1
        self.group.stop_one(proc)
        self.procs[target] = self.start_proxy(target)
        self.log(f"restarted {target} on port {self.procs[target].port}")

    def run_case(self, round_no: int, case: Case, target: str) -> None:
        proc = self.procs[target]
        args = loadgen.benchmark_args(
            proc.port,
            clients=CLIENTS,
            requests=case.requests,
            pipeline=case.pipeline,
            data_bytes=case.data_bytes,
            keyspace=case.keyspace,
            tests=() if case.command else (case.test,),
            command=case.command,
        )
        remaining = self.budget_s - (time.monotonic() - self.started)
        if remaining < 1:
            raise OutOfTime
        cpu_before = cpu_seconds(proc.pid, tree=True)  # with workers: supervisor and workers
        out = loadgen.run_benchmark(args, min(self.settings.run_timeout_s, remaining))
        cpu_after = cpu_seconds(proc.pid, tree=True)
        row = next(iter(out.rows.values()), None)
        cpu_us = None
        if cpu_before is not None and cpu_after is not None:
            cpu_us = (cpu_after - cpu_before) / case.requests * 1e6
        self.runs.append(
            {
                "round": round_no,
                "case": case.label,
                "target": target,
                "rps": row.rps if row else None,
                "p50_ms": row.latency_ms.get("p50") if row else None,
                "p99_ms": row.latency_ms.get("p99") if row else None,
                "latency_ms": row.latency_ms if row else {},
                "cpu_us": None if cpu_us is None else round(cpu_us, 2),
                "wall_s": round(out.wall_s, 2),
                "errors": out.errors,
                "returncode": out.returncode,
                "command": " ".join(args),
            }
        )
        shown = f"{row.rps:>10,.0f} rps, p50 {row.latency_ms.get('p50')} ms" if row else "no result"
        self.log(f"round {round_no} {case.label:<20} {target:<11} {shown}")
        if out.errors:
            where = f"{case.label} on {target}, round {round_no}"
            self.problem(f"{where}: {'; '.join(out.errors[:5])}")
        self.check_alive(target, f"{case.label}, round {round_no}")

    def run_matrix(self, rounds: int) -> None:
        """Every case on every target, `rounds` times; targets take turns going first."""
        cases = build_cases(self.settings)
        targets = list(report.TARGETS)
        longest = 0.0
        for round_no in range(1, rounds + 1):
            elapsed = time.monotonic() - self.started
            if round_no > 1 and elapsed + longest * 1.1 > self.budget_s:
                self.problem(
                    f"time budget: ran {self.rounds_done} of {rounds} rounds (a round takes "
                    f"{longest:.0f} s; {elapsed:.0f} s used of {self.budget_s:.0f} s)"
                )
                return
            began = time.monotonic()
            first = (round_no - 1) % len(targets)
            order = targets[first:] + targets[:first]
            try:
                for case in cases:
                    for target in order:
                        self.run_case(round_no, case, target)
            except OutOfTime:
                self.problem(f"time budget of {self.budget_s:.0f} s spent during round {round_no}")
                return
            self.rounds_done = round_no
            longest = max(longest, time.monotonic() - began)

    def finish_memory(self) -> None:
        for target in ("shardproxy", "nutcracker"):
            if target in self.memory and self.procs[target].alive():
                self.memory[target]["after_all"] = self.rss_kib(target)


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, fewer requests (< 90 s)")
    parser.add_argument("--rounds", type=int, help="rounds of the matrix (median reported)")
    parser.add_argument("--out", type=Path, help="results directory")
    parser.add_argument(
        "--rev",
        help="benchmark proxy/ as of this git revision (exported to a temp dir), "
        "not the working tree",
    )
    parser.add_argument(
        "--hash",
        default="crc32a",
        choices=("crc32a", "fnv1a_64", "md5"),
        help="key hash of both proxies' pool (default crc32a: C in both; shardproxy's fnv1a_64 "
        "is pure Python, about 2 µs a key)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="shardproxy's `workers:` (default 1); CPU and memory are then summed over the "
        "supervisor and its workers",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.workers <= 64:
        parser.error("--workers takes 1..64")
    if args.rounds is not None and not 1 <= args.rounds <= 20:
        parser.error("--rounds takes 1..20")
    return args


def results_dict(
    bench: Bench, mode: str, started: str, loadavg: str, versions: dict[str, str]
) -> dict[str, Any]:
    return {
        "started": started,
        "mode": mode,
        "duration_s": time.monotonic() - bench.started,
        "rounds_done": bench.rounds_done,
        "loadavg_start": loadavg,
        "loadavg_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "params": {
            "clients": CLIENTS,
            "hash": bench.hash_name,
            "workers": bench.workers,
            "keyspace": KEYSPACE,
            "settings": bench.settings.__dict__,
            "idle_clients": IDLE_CLIENTS,
            "load_clients": LOAD_CLIENTS,
            "load_pipeline": LOAD_PIPELINE,
        },
        "versions": versions,
        "summary": report.summarize(bench.runs),
        "memory": bench.memory,
        "problems": bench.problems,
        "runs": bench.runs,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    rounds = args.rounds or settings.rounds
    now = datetime.datetime.now().astimezone()
    out_dir = args.out or REPO / "benchmarks" / "results" / now.strftime("%Y%m%d-%H%M%S")
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    loadgen.raise_nofile(IDLE_CLIENTS + LOAD_CLIENTS + 200)
    loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    versions: dict[str, str] = {}
    status = 0
    with tempfile.TemporaryDirectory(prefix="shardproxy-bench-") as tmp:
        bench = Bench(settings, rounds, out_dir, Path(tmp) / "data", REPO, args.hash, args.workers)
        try:
            if args.rev:
                bench.source = export_source(args.rev, Path(tmp) / "src")
            versions = report.collect_versions(report.shardproxy_version(bench.source, args.rev))
            bench.start()
            bench.populate()
            bench.measure_memory()
            bench.run_matrix(rounds)
            bench.finish_memory()
        except KeyboardInterrupt:
            bench.problem("interrupted: results are partial")
            status = 130
        except (HarnessError, OSError, RuntimeError) as exc:
            bench.problem(f"aborted: {exc}")
            status = 1
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip this
            bench.group.stop()
            signal.signal(signal.SIGINT, signal.default_int_handler)
    mode = ("quick" if args.quick else "full") + (
        f", proxy/ from git {args.rev}" if args.rev else ""
    )
    results = results_dict(bench, mode, now.isoformat("T", "seconds"), loadavg, versions)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    table = report.render_markdown(results)
    (out_dir / "results.md").write_text(table, encoding="utf-8")
    print(table)
    print(f"results in {out_dir}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
