"""Run a ProxyServer in-process on its own uvloop thread, on free ports, for integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import uvloop

from proxy.config.schema import parse_config
from proxy.server.server import ProxyServer
from tests.support.processes import free_port

# Every cache defence switched on, as hard as a test can push it: every request sampled, every
# tracked key hot, every key cacheable for a minute (a missed invalidation shows as a stale read),
# coalescing, TTL jitter of 0% on every key (the TTL rewrite runs, replies stay Redis's), big keys.
DEFENDED = (
    "hotkeys: {sample_every: 1, top: 256, capacity: 1024, hot_rate_per_s: 0}\n"
    "bigkeys: {threshold_bytes: 4096}\n"
    "hotcache: {enabled: true, ttl_ms: 60000, patterns: ['*']}\n"
    "coalesce: {enabled: true}\n"
    "ttl_jitter: [{pattern: '*', percent: 0}]\n"
)


def pool_yaml(name: str, addrs: list[str], extra: str = "") -> str:
    servers = "\n".join(f"      - {a}:1 s{i + 1}" for i, a in enumerate(addrs))
    return f"  {name}:\n{extra}    servers:\n{servers}\n"


def simple_config(addrs: list[str], port: int, admin_port: int, extra: str = "") -> str:
    return (
        f"listen: 127.0.0.1:{port}\nadmin: 127.0.0.1:{admin_port}\n{extra}"
        "backend:\n  command_timeout_ms: 2000\n  retry_backoff_ms: 50\n"
        "  health_check_interval_ms: 200\n  failure_threshold: 1\n"
        f"pools:\n{pool_yaml('main', addrs)}"
    )


class ProxyThread:
    """A proxy on a background event loop; `call` runs a coroutine on that loop."""

    def __init__(self, config_text: str, path: str | None = None) -> None:
        self.config_text = config_text
        self.path = path
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: ProxyServer | None = None

    def start(self) -> ProxyThread:
        self.thread.start()
        config = parse_config(self.config_text)

        async def boot() -> ProxyServer:
            server = ProxyServer(config, self.config_text, self.path)
            await server.start()
            return server

        self.server = self.call(boot())
        return self

    def call(self, coro: Any, timeout_s: float = 30) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout_s)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.listen_port

    def stop(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@contextlib.contextmanager
def running_proxy(config_text: str, path: str | None = None) -> Iterator[ProxyThread]:
    proxy = ProxyThread(config_text, path).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def proxy_for(addrs: list[str], extra: str = "") -> contextlib.AbstractContextManager[ProxyThread]:
    return running_proxy(simple_config(addrs, free_port(), free_port(), extra))
