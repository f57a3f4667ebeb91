"""Every Prometheus metric, declared once. Labels come from bounded sets only (command names from
the command table, backend names from the config, phases), never from keys.

Hot-path counts are kept in plain dicts by the server and exported by a collector at scrape time,
so a request costs one dict update, not a prometheus-client label lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from proxy.commands import CommandSpec


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.client_connections_total = Counter(
            "shardproxy_client_connections_total", "Client connections accepted", registry=r
        )
        self.client_errors_total = Counter(
            "shardproxy_client_errors_total",
            "Client errors by kind (protocol, auth, limit)",
            ["kind"],
            registry=r,
        )
        self.config_generation = Gauge(
            "shardproxy_config_generation", "Generation of the config in use", registry=r
        )
        self.config_reloads_total = Counter(
            "shardproxy_config_reloads_total", "Config reloads by outcome", ["outcome"], registry=r
        )
        # Plain counters the hot path updates; exported by _HotCollector.
        self.commands: dict[str, list[int]] = {}  # label -> [ok, rejected]

    def count_command(self, spec: CommandSpec | None, rejected: bool) -> None:
        label = spec.label if spec is not None else "unknown"
        counts = self.commands.get(label)
        if counts is None:
            counts = self.commands[label] = [0, 0]
        counts[1 if rejected else 0] += 1

    def add_live_collector(
        self, clients: Callable[[], int], backends: Callable[[], list[tuple[str, bool, int]]]
    ) -> None:
        self.registry.register(_HotCollector(self, clients, backends))


class _HotCollector(Collector):
    def __init__(
        self,
        metrics: ProxyMetrics,
        clients: Callable[[], int],
        backends: Callable[[], list[tuple[str, bool, int]]],
    ) -> None:
        self.metrics = metrics
        self.clients = clients
        self.backends = backends

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        commands = CounterMetricFamily(
            "shardproxy_commands", "Commands by name and outcome", labels=["command", "outcome"]
        )
        for label, (forwarded, rejected) in sorted(self.metrics.commands.items()):
            commands.add_metric([label, "forwarded"], forwarded)
            commands.add_metric([label, "rejected"], rejected)
        yield commands
        yield GaugeMetricFamily(
            "shardproxy_client_connections", "Open client connections", value=self.clients()
        )
        up = GaugeMetricFamily("shardproxy_backend_up", "Backend reachable", labels=["backend"])
        inflight = GaugeMetricFamily(
            "shardproxy_backend_inflight", "Requests awaiting a backend reply", labels=["backend"]
        )
        for name, is_up, pending in self.backends():
            up.add_metric([name], 1 if is_up else 0)
            inflight.add_metric([name], pending)
        yield up
        yield inflight
