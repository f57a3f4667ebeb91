"""A proxy with prefix routes on a config file it reloads from, over five real redis-servers:
pools main (s0 s1), main2 (s0 s1 s2), queues (given) and queues2 (queues plus s4); the route
`rq:` -> queues by default. Used by test_prefix_routes and test_rq.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from proxy.config.schema import parse_config
from proxy.routing.topology import build_topology
from tests.support.processes import RedisServer, free_port
from tests.support.runner import ProxyThread

ROUTE = "[{prefix: 'rq:', pool: queues}]"


class Routed:
    """A proxy on a config file with pools main (s0 s1), main2 (s0 s1 s2), queues and queues2."""

    def __init__(self, servers: list[RedisServer], path: Path, queues: list[int]) -> None:
        self.s = servers
        self.path = path
        self.queues = queues  # server indexes of pool queues; queues2 adds s4
        self.port, self.admin = free_port(), free_port()
        path.write_text(self.render())
        self.proxy = ProxyThread(path.read_text(), str(path)).start()
        self.client = redis.Redis(port=self.port)

    def render(self, routes: str = ROUTE, route: str = "main",
               migration: str = "") -> str:  # fmt: skip
        def pool(name: str, idx: list[int]) -> str:
            return f"  {name}: {{servers: [{', '.join(self.s[i].addr for i in idx)}]}}\n"

        return (
            f"listen: 127.0.0.1:{self.port}\nadmin: 127.0.0.1:{self.admin}\n"
            "backend: {retry_backoff_ms: 50, health_check_interval_ms: 500}\npools:\n"
            + pool("main", [0, 1])
            + pool("main2", [0, 1, 2])
            + pool("queues", self.queues)
            + pool("queues2", [*self.queues, 4])
            + f"route: {route}\nroutes: {routes}\n{migration}"
        )

    def reload(self, text: str) -> tuple[bool, str]:
        self.path.write_text(text)
        server = self.proxy.server
        assert server is not None
        return self.proxy.call(server.reload_from_file())  # type: ignore[no-any-return]

    def status(self) -> dict[str, Any]:
        async def status() -> dict[str, Any]:
            assert self.proxy.server is not None
            return self.proxy.server.status()  # type: ignore[no-any-return]

        return self.proxy.call(status())  # type: ignore[no-any-return]

    def on_backends(self, key: bytes) -> list[int]:
        """Indexes of the servers holding `key`, asked directly."""
        return [i for i, s in enumerate(self.s) if s.client().exists(key)]

    def owner(self, key: bytes) -> int:
        """The server index that the proxy's current config routes `key` to."""
        topology = build_topology(parse_config(self.path.read_text(), env={}), 0, "")
        addr = topology.keyspace.addr_for(key)
        return next(i for i, s in enumerate(self.s) if s.addr == addr)

    def stop(self) -> None:
        self.client.close()
        self.proxy.stop()
