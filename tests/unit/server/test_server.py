"""The composition root's per-process settings under a supervisor: a worker's memory guard uses
its share of client.max_memory_bytes (the budget is the container's, and every worker holds
clients), and /status reports what the guard holds and allows (no backend, no loop)."""

from __future__ import annotations

from dataclasses import replace

from proxy.config.schema import parse_config
from proxy.server.server import ProxyServer, WorkerRole

BUDGET = 1_000_000
CONFIG = (
    "listen: 127.0.0.1:7777\nworkers: 4\n"
    f"client: {{max_memory_bytes: {BUDGET}}}\n"
    "pools: {main: {servers: [127.0.0.1:7001 r1]}}\n"
)


class Holder:
    """A client holding `size` bytes."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.throttled = False

    def held_bytes(self) -> int:
        return self.size

    def throttle(self, on: bool) -> None:
        self.throttled = on

    def evict(self, reason: str) -> None:
        raise AssertionError(f"evicted: {reason}")


def server(role: WorkerRole | None) -> ProxyServer:
    return ProxyServer(parse_config(CONFIG), CONFIG, None, role)


def test_a_workers_memory_guard_uses_its_share_of_the_budget() -> None:
    worker, single = server(WorkerRole(index=1, generation=1)), server(None)
    assert worker.memory_budget() == BUDGET // 4
    assert single.memory_budget() == BUDGET
    for proxy in (worker, single):
        holder = Holder(BUDGET // 3)  # over a quarter of the budget, under all of it
        proxy.clients.add(holder)  # type: ignore[arg-type]
        proxy.memory.sweep()
        assert holder.throttled is (proxy is worker)
        assert proxy.memory.held == BUDGET // 3


def test_workers_override_sets_the_share() -> None:
    config = replace(parse_config(CONFIG), workers=2)  # serve --workers 2, as worker.py does
    worker = ProxyServer(config, CONFIG, None, WorkerRole(index=0, generation=1))
    assert worker.memory_budget() == BUDGET // 2
