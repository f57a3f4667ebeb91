"""Every Prometheus metric, declared once. Labels come from bounded sets only (command names from
the command table, backend names from the config, phases, fixed outcome kinds), never from keys.

The hot path updates plain Python counters and histograms (`CommandStats`, `BackendStats`: a list
index and two additions per observation); a collector turns them into Prometheus families at
scrape time, so a request never pays for a prometheus-client label lookup or lock.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Info
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

# Seconds; fine below a millisecond, where a healthy proxy hop lives.
LATENCY_BUCKETS_S: Final[tuple[float, ...]] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


def latency_bucket(seconds: float) -> int:
    """bisect_left(LATENCY_BUCKETS_S, seconds), unrolled: float compares in the compiled build,
    where bisect_left costs ten times as much (boxed floats, rich compares). Most requests are
    answered within a millisecond: they take the first five tests."""
    if seconds <= 0.001:
        if seconds <= 0.00025:
            return 0 if seconds <= 0.00005 else 1 if seconds <= 0.0001 else 2
        return 3 if seconds <= 0.0005 else 4
    for i in range(5, len(LATENCY_BUCKETS_S)):
        if seconds <= LATENCY_BUCKETS_S[i]:
            return i
    return len(LATENCY_BUCKETS_S)


CLIENT_ERROR_KINDS = ("protocol", "auth", "noperm", "address", "limit", "memory")
TLS_HANDSHAKE_FAILURES = ("timeout", "certificate", "protocol")  # net/listener.failure_kind
BACKEND_ERROR_KINDS = ("timeout", "connection", "reply")  # BackendStats fields, error counts


class FastHistogram:
    """A histogram for one thread: observe() is a bucket lookup and two additions.

    The hot loops (client flush, backend replies) inline observe(): `buckets[latency_bucket(
    seconds)] += 1` and `total += seconds`; the count is the buckets' sum.
    """

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)  # last: above the largest bound
        self.total = 0.0

    @property
    def count(self) -> int:
        return sum(self.buckets)

    def observe(self, seconds: float) -> None:
        self.buckets[latency_bucket(seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*LATENCY_BUCKETS_S, float("inf")), self.buckets, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding quantile q (0 when empty): for /status, not SLOs."""
        count = self.count
        if not count:
            return 0.0
        rank = q * count
        running = 0
        for bound, n in zip((*LATENCY_BUCKETS_S, float("inf")), self.buckets, strict=True):
            running += n
            if running >= rank:
                return min(bound, LATENCY_BUCKETS_S[-1])
        return LATENCY_BUCKETS_S[-1]


class CommandStats(FastHistogram):
    """Per command: latency as the client sees it inside the proxy, and outcomes."""

    __slots__ = ("errors", "label", "rejected")

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label
        self.errors = 0  # error replies (from a backend, or a backend unavailable/timeout)
        self.rejected = 0  # refused by the proxy before forwarding (unknown, arity, auth...)


@dataclass
class BackendStats:
    """Per backend: reply latency from request dispatch, and errors by kind."""

    latency: FastHistogram
    timeout: int = 0
    connection: int = 0
    reply: int = 0  # error replies (-ERR, -WRONGTYPE...) the backend sent
    busy: int = 0  # stalled connections found busy with a script (-BUSY), kept instead of failed
    local: int = 0  # connections or probes the proxy could not open itself (EMFILE, ENFILE...)
    tls: int = 0  # TLS handshakes with the backend that failed (connections and probes)
    # Connections one client uses alone, open now, by purpose (net/dedicated.py).
    dedicated: dict[str, int] = field(default_factory=dict)

    @classmethod
    def new(cls) -> BackendStats:
        return cls(FastHistogram())


BackendRow = tuple[str, bool, int, BackendStats]  # name, up, in flight, stats


class ConfigMetrics:
    """The config in use and reload outcomes, exported by the process that takes reloads: the
    proxy, or the supervisor of its workers (SUPERVISOR_FAMILIES)."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.generation = Gauge(
            "shardproxy_config_generation", "Generation of the config in use", registry=r
        )
        self.reloads_total = Counter(
            "shardproxy_config_reloads_total", "Config reloads by outcome", ["outcome"], registry=r
        )
        for outcome in ("ok", "refused"):
            self.reloads_total.labels(outcome)
        self.info = Info(
            "shardproxy_config", "The config in use (hash, route pool, phase)", registry=r
        )


# With `workers: N > 1` each worker publishes its families to the supervisor's multiprocess
# directory (proxy/workers/metrics_files.py) and the supervisor's /metrics merges them: counters and
# histograms are summed; a gauge combines by the mode below (prometheus-client's names; `live`:
# a dead worker's value is dropped). The config families come from the supervisor alone, the
# migration job's from the one worker that runs it; the backend ACL check is the supervisor's.
SUPERVISOR_FAMILIES = frozenset(
    {
        "shardproxy_config_generation",
        "shardproxy_config_reloads",
        "shardproxy_config",
        "shardproxy_backend_acl_ok",
    }
)
JOB_FAMILIES = frozenset(
    {
        "shardproxy_backfill_keys",
        "shardproxy_backfill_progress_ratio",
        "shardproxy_verify_mismatches",
    }
)
GAUGE_MODES: dict[str, str] = {
    "shardproxy_client_connections": "livesum",
    "shardproxy_client_max_connections": "livesum",
    "shardproxy_backend_inflight": "livesum",
    "shardproxy_backend_dedicated_connections": "livesum",
    "shardproxy_client_memory_bytes": "livesum",
    "shardproxy_clients_throttled": "livesum",
    "shardproxy_pubsub_subscriptions": "livesum",
    "shardproxy_backend_up": "livemin",  # down when any worker cannot reach it
    "shardproxy_migration_phase": "livemax",
    "shardproxy_backfill_progress_ratio": "livemax",
}


def acl_ok_gauge(r: CollectorRegistry) -> Gauge:
    """Set by whoever runs backend.acl_check: a single proxy, or the supervisor of workers."""
    return Gauge(
        "shardproxy_backend_acl_ok",
        "1 when the backend user's ACL matches `shardproxy acl` (backend.acl_check), 0 when"
        " it allows what the proxy refuses or refuses what it needs; absent: not checked",
        ["backend"],
        registry=r,
    )


class SupervisorMetrics:
    """The supervisor's /metrics: every worker's families merged from `metrics_dir`, plus the
    config families and the worker processes' own."""

    def __init__(self, metrics_dir: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        r.register(_WorkerFilesCollector(metrics_dir))
        self.config = ConfigMetrics(r)
        self.backend_acl_ok = acl_ok_gauge(r)  # the supervisor checks the backend user once
        self.workers = Gauge("shardproxy_workers", "Worker processes running", registry=r)
        self.worker_restarts_total = Counter(
            "shardproxy_worker_restarts_total", "Worker processes restarted after exiting",
            registry=r,
        )  # fmt: skip


class _WorkerFilesCollector(Collector):
    """prometheus-client's multiprocess merge, one metric type at a time: a counter and a gauge
    may share a family name (`shardproxy_client_connections_total` is the counter family
    `shardproxy_client_connections`), which one merge over every file would mix up."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        for kind in ("counter", "gauge", "histogram"):
            files = glob.glob(os.path.join(self.directory, f"{kind}_*.db"))
            yield from MultiProcessCollector.merge(files)  # type: ignore[no-untyped-call]


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.client_connections_total = Counter(
            "shardproxy_client_connections_total", "Client connections accepted", registry=r
        )
        self.max_clients = Gauge(
            "shardproxy_client_max_connections",
            "Effective client connection limit: client.max_connections, lowered to fit the "
            "file descriptor limit after the reserve for backend, probe and admin connections",
            registry=r,
        )
        self.client_errors_total = Counter(
            "shardproxy_client_errors_total",
            "Client errors by kind (protocol, auth, noperm, address, limit, memory)",
            ["kind"],
            registry=r,
        )
        for kind in CLIENT_ERROR_KINDS:
            self.client_errors_total.labels(kind)
        self.client_memory_bytes = Gauge(
            "shardproxy_client_memory_bytes",
            "Bytes that clients make the proxy hold: unread and owed replies, partial requests",
            registry=r,
        )
        self.clients_throttled = Gauge(
            "shardproxy_clients_throttled",
            "Clients not read from because all clients hold more than client.max_memory_bytes",
            registry=r,
        )
        config = ConfigMetrics(r)
        self.config_generation = config.generation
        self.config_reloads_total = config.reloads_total
        self.config_info = config.info
        self.commands: dict[str, CommandStats] = {}  # command label -> stats
        self.backend_acl_ok = acl_ok_gauge(r)
        self.pubsub_subscriptions = Gauge(
            "shardproxy_pubsub_subscriptions",
            "Subscriptions clients hold, by kind (channel, pattern, shard_channel)",
            ["kind"],
            registry=r,
        )
        for kind in ("channel", "pattern", "shard_channel"):
            self.pubsub_subscriptions.labels(kind)
        self.tls_handshake_failures_total = Counter(
            "shardproxy_client_tls_handshake_failures_total",
            "Client TLS handshakes that failed, by kind: timeout (client.tls."
            "handshake_timeout_ms), certificate (missing, refused or untrusted), protocol",
            ["kind"],
            registry=r,
        )
        for kind in TLS_HANDSHAKE_FAILURES:
            self.tls_handshake_failures_total.labels(kind)

    def command_stats(self, label: str) -> CommandStats:
        stats = self.commands.get(label)
        if stats is None:
            stats = self.commands[label] = CommandStats(label)
        return stats

    def add_live_collector(
        self,
        clients: Callable[[], int],
        backends: Callable[[], Iterable[BackendRow]],
        extra: Callable[[], Iterable[Metric]] | None = None,
    ) -> None:
        self.registry.register(_LiveCollector(self, clients, backends, extra))


class _LiveCollector(Collector):
    def __init__(
        self,
        metrics: ProxyMetrics,
        clients: Callable[[], int],
        backends: Callable[[], Iterable[BackendRow]],
        extra: Callable[[], Iterable[Metric]] | None,
    ) -> None:
        self.metrics = metrics
        self.clients = clients
        self.backends = backends
        self.extra = extra

    def collect(self) -> Iterator[Metric]:
        yield from self._commands()
        yield GaugeMetricFamily(
            "shardproxy_client_connections", "Open client connections", value=self.clients()
        )
        yield from self._backends()
        if self.extra is not None:
            yield from self.extra()

    def _commands(self) -> Iterator[Metric]:
        total = CounterMetricFamily(
            "shardproxy_commands",
            "Commands by name and outcome (ok, error, rejected)",
            labels=["command", "outcome"],
        )
        duration = HistogramMetricFamily(
            "shardproxy_command_duration_seconds",
            "Command latency inside the proxy, from request parsed to reply written",
            labels=["command"],
        )
        for label, s in sorted(self.metrics.commands.items()):
            total.add_metric([label, "ok"], s.count - s.errors)
            total.add_metric([label, "error"], s.errors)
            total.add_metric([label, "rejected"], s.rejected)
            if s.count:
                duration.add_metric([label], s.cumulative(), s.total)
        yield total
        yield duration

    def _backends(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("shardproxy_backend_up", "Backend reachable", labels=["backend"])
        inflight = GaugeMetricFamily(
            "shardproxy_backend_inflight", "Requests awaiting a backend reply", labels=["backend"]
        )
        latency = HistogramMetricFamily(
            "shardproxy_backend_request_duration_seconds",
            "Backend reply latency, from request dispatch to reply parsed",
            labels=["backend"],
        )
        errors = CounterMetricFamily(
            "shardproxy_backend_errors",
            "Backend errors by kind (timeout, connection, reply)",
            labels=["backend", "kind"],
        )
        busy = CounterMetricFamily(
            "shardproxy_backend_busy_events",
            "Stalled backend connections found busy running a script (-BUSY), kept open",
            labels=["backend"],
        )
        local = CounterMetricFamily(
            "shardproxy_backend_local_resource_failures",
            "Connections or health checks to a backend the proxy could not open for lack of its "
            "own resources (EMFILE, ENFILE, ENOBUFS, ENOMEM); the backend's state is kept",
            labels=["backend"],
        )
        tls = CounterMetricFamily(
            "shardproxy_backend_tls_handshake_failures",
            "TLS handshakes with a backend that failed (certificate not trusted, wrong name, "
            "protocol), connections and health checks alike",
            labels=["backend"],
        )
        dedicated = GaugeMetricFamily(
            "shardproxy_backend_dedicated_connections",
            "Backend connections one client uses alone, open now, by purpose "
            "(blocking, watch, pubsub, stream)",
            labels=["backend", "purpose"],
        )
        for name, is_up, pending, stats in self.backends():
            for purpose, count in sorted(stats.dedicated.items()):
                dedicated.add_metric([name, purpose], count)
            up.add_metric([name], 1 if is_up else 0)
            inflight.add_metric([name], pending)
            latency.add_metric([name], stats.latency.cumulative(), stats.latency.total)
            for kind in BACKEND_ERROR_KINDS:
                errors.add_metric([name, kind], getattr(stats, kind))
            busy.add_metric([name], stats.busy)
            local.add_metric([name], stats.local)
            tls.add_metric([name], stats.tls)
        yield from (up, inflight, latency, errors, busy, local, tls, dedicated)


@dataclass
class DefenceStats:
    """The cache defences' counters (net/hotkeys.py, net/hotcache.py, net/defence.py); labels
    are commands and backends, never keys."""

    cache_hits: int = 0
    cache_misses: int = 0  # cacheable reads (hot, matching) that went to a backend
    cache_evictions: int = 0  # LRU evictions for the byte budget
    cache_bytes: int = 0
    cache_entries: int = 0
    coalesced: int = 0  # reads that joined another client's read in flight
    jittered: int = 0  # TTLs extended by ttl_jitter
    bigkeys: dict[tuple[str, str], int] = field(default_factory=dict)  # (command, direction)
    hottest_share: dict[str, float] = field(default_factory=dict)  # backend -> share


def defence_families(s: DefenceStats) -> Iterator[Metric]:
    counters = (
        ("hotcache_hits", "Reads answered from the hot-key cache", s.cache_hits),
        ("hotcache_misses", "Cacheable reads of hot keys sent to a backend", s.cache_misses),
        (
            "hotcache_evictions",
            "Hot-key cache entries evicted for the byte budget",
            s.cache_evictions,
        ),
        ("coalesced_reads", "Reads that shared another read already in flight", s.coalesced),
        ("ttl_jittered", "TTLs extended by ttl_jitter", s.jittered),
    )
    for name, doc, value in counters:
        yield CounterMetricFamily(f"shardproxy_{name}", doc, value=value)
    yield GaugeMetricFamily("shardproxy_hotcache_bytes", "Hot-key cache size", value=s.cache_bytes)
    yield GaugeMetricFamily(
        "shardproxy_hotcache_entries", "Hot-key cache entries", value=s.cache_entries
    )
    big = CounterMetricFamily(
        "shardproxy_bigkeys",
        "Requests and replies over bigkeys.threshold_bytes, by command and direction",
        labels=["command", "direction"],
    )
    for (command, direction), count in sorted(s.bigkeys.items()):
        big.add_metric([command, direction], count)
    yield big
    share = GaugeMetricFamily(
        "shardproxy_hotkey_top_share",
        "The hottest key's share of a backend's sampled requests over the hot-key window",
        labels=["backend"],
    )
    for backend, fraction in sorted(s.hottest_share.items()):
        share.add_metric([backend], fraction)
    yield share
