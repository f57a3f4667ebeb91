"""Worker metrics published in prometheus-client's multiprocess format and merged the way the
supervisor's /metrics merges them (real files in a temp dir, no process)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from proxy.jobs.runner import PhaseRunner
from proxy.net.fence import MigrationState
from proxy.net.metrics import (
    GAUGE_MODES,
    JOB_FAMILIES,
    SUPERVISOR_FAMILIES,
    BackendRow,
    BackendStats,
    ProxyMetrics,
    SupervisorMetrics,
)
from proxy.net.pool import BackendPool
from proxy.net.route import RouteTable
from proxy.workers.metrics_files import MetricsPublisher, forget_worker


def _no_route_table() -> RouteTable:
    raise AssertionError("no request is routed here")


class FakeWorker:
    """A worker's ProxyMetrics with controllable clients and backends."""

    def __init__(self) -> None:
        self.metrics = ProxyMetrics()
        self.clients = 0
        self.backends: list[BackendRow] = []
        self.phases = PhaseRunner(BackendPool(), MigrationState(_no_route_table))
        self.metrics.add_live_collector(lambda: self.clients, lambda: self.backends,
                                        self.phases.collect)  # fmt: skip

    def traffic(self, command: str, latencies_s: list[float], errors: int = 0) -> None:
        stats = self.metrics.command_stats(command)
        for seconds in latencies_s:
            stats.observe(seconds)
        stats.errors += errors


def parse(body: bytes) -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def types(body: bytes) -> set[str]:
    return {line for line in body.decode().splitlines() if line.startswith("# TYPE")}


def merged(directory: Path) -> dict[str, float]:
    """The workers' part of a supervisor's /metrics over `directory`."""
    registry = SupervisorMetrics(str(directory)).registry
    own = ("shardproxy_config", "shardproxy_worker")
    return {k: v for k, v in parse(generate_latest(registry)).items() if not k.startswith(own)}


def publish_once(w: FakeWorker, directory: Path, runs_jobs: bool, ident: str) -> None:
    publisher = MetricsPublisher(w.metrics.registry, str(directory), runs_jobs, ident)
    publisher.publish()
    publisher.close()


def backend(name: str, up: bool, inflight: int, latencies_s: list[float]) -> BackendRow:
    stats = BackendStats.new()
    for seconds in latencies_s:
        stats.latency.observe(seconds)
    stats.timeout = 1
    return (name, up, inflight, stats)


def test_one_worker_merges_to_exactly_its_own_metrics(tmp_path: Path) -> None:
    w = FakeWorker()
    w.clients = 7
    w.backends = [backend("r1", True, 3, [0.0002, 0.003]), backend("r2", False, 0, [])]
    w.traffic("get", [0.0001, 0.0004, 0.02, 3.0], errors=1)
    w.metrics.client_connections_total.inc(5)
    w.metrics.client_errors_total.labels("auth").inc()
    publish_once(w, tmp_path, True, "11")
    own = {
        name: value
        for name, value in parse(generate_latest(w.metrics.registry)).items()
        if "_created" not in name and not name.startswith(("shardproxy_config",))
    }
    assert merged(tmp_path) == own
    registry = SupervisorMetrics(str(tmp_path)).registry
    missing = types(generate_latest(w.metrics.registry)) - types(generate_latest(registry))
    with_samples = [t for t in missing if any(k.startswith(t.split()[2]) for k in own)]
    assert with_samples == []  # same names and types (a family with no sample has no series)
    assert own['shardproxy_command_duration_seconds_bucket{command="get",le="0.0005"}'] == 2
    assert own['shardproxy_backend_errors_total{backend="r1",kind="timeout"}'] == 1


def test_workers_sum_and_gauges_combine_by_mode(tmp_path: Path) -> None:
    a, b = FakeWorker(), FakeWorker()
    a.clients, b.clients = 3, 4
    a.backends = [backend("r1", True, 1, [0.001])]
    b.backends = [backend("r1", False, 2, [0.001, 0.2])]
    a.traffic("get", [0.0001] * 10)
    b.traffic("get", [0.0001] * 5 + [0.5], errors=2)
    for ident, w in (("21", a), ("22", b)):
        publish_once(w, tmp_path, ident == "21", ident)
    m = merged(tmp_path)
    assert m['shardproxy_commands_total{command="get",outcome="ok"}'] == 10 + 4
    assert m['shardproxy_commands_total{command="get",outcome="error"}'] == 2
    assert m['shardproxy_command_duration_seconds_count{command="get"}'] == 16
    assert m['shardproxy_command_duration_seconds_bucket{command="get",le="0.0001"}'] == 15
    assert m['shardproxy_command_duration_seconds_bucket{command="get",le="+Inf"}'] == 16
    assert m['shardproxy_command_duration_seconds_sum{command="get"}'] == (
        pytest.approx(0.0015 + 0.5)
    )
    assert m["shardproxy_client_connections"] == 7  # livesum
    assert m['shardproxy_backend_inflight{backend="r1"}'] == 3  # livesum
    assert m['shardproxy_backend_up{backend="r1"}'] == 0  # livemin: one worker cannot reach it
    assert m['shardproxy_backend_request_duration_seconds_count{backend="r1"}'] == 3
    assert m['shardproxy_migration_phase{phase="none"}'] == 1  # livemax, not 2
    assert m['shardproxy_backfill_keys_total{outcome="scanned"}'] == 0  # from worker 0 only
    assert not any(name.startswith("shardproxy_config") for name in m)


def test_dead_worker_keeps_its_counts_but_not_its_live_gauges(tmp_path: Path) -> None:
    a, b = FakeWorker(), FakeWorker()
    a.clients, b.clients = 2, 5
    a.traffic("set", [0.001] * 4)
    b.traffic("set", [0.001] * 6)
    publish_once(a, tmp_path, True, "31")
    publish_once(b, tmp_path, False, "32")
    forget_worker(32, str(tmp_path))
    m = merged(tmp_path)
    assert m["shardproxy_client_connections"] == 2
    assert m['shardproxy_commands_total{command="set",outcome="ok"}'] == 10


def test_a_series_that_goes_away_is_dropped(tmp_path: Path) -> None:
    w = FakeWorker()
    w.backends = [backend("r1", True, 0, [0.001]), backend("old", True, 0, [0.001])]
    publisher = MetricsPublisher(w.metrics.registry, str(tmp_path), True, "41")
    publisher.publish()
    assert 'shardproxy_backend_up{backend="old"}' in merged(tmp_path)
    w.backends = w.backends[:1]  # a reload removed it
    w.clients = 9
    publisher.publish()
    m = merged(tmp_path)
    assert 'shardproxy_backend_up{backend="old"}' not in m
    assert 'shardproxy_backend_request_duration_seconds_count{backend="old"}' not in m
    assert m["shardproxy_client_connections"] == 9
    assert not [f for f in os.listdir(tmp_path) if not f.endswith(".db")]  # no temp file left
    publisher.close()


def test_restarted_job_runner_replaces_the_job_counts(tmp_path: Path) -> None:
    """The backfill's counts come from its shared progress: a restarted worker 0 reports the same
    totals again, which must not be added to the dead one's."""
    first = FakeWorker()
    publish_once(first, tmp_path, True, "51")
    second = FakeWorker()
    publish_once(second, tmp_path, True, "52")
    jobs = sorted(f for f in os.listdir(tmp_path) if "jobs" in f)
    assert jobs == ["counter_jobs.db", "gauge_livemax_jobs.db"]


def test_every_gauge_a_worker_exports_has_a_chosen_mode() -> None:
    w = FakeWorker()
    w.backends = [backend("r1", True, 0, [])]
    families = {f.name: f.type for f in w.metrics.registry.collect()}
    gauges = {name for name, kind in families.items() if kind == "gauge"}
    assert sorted(gauges - SUPERVISOR_FAMILIES - set(GAUGE_MODES)) == []
    assert set(GAUGE_MODES) <= set(families)
    assert set(families) >= JOB_FAMILIES and set(families) >= SUPERVISOR_FAMILIES
