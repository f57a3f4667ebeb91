"""Backend connections against a real redis-server: how replies reach their owners.

Big replies that arrive inside a read with others are handed to client connections as
memoryviews of that read (no copy); every other owner (background jobs' futures, merges) must
get bytes, since it parses or keeps them.
"""

from __future__ import annotations

import uvloop

from proxy.config.schema import BackendConfig
from proxy.net.backend import Backend
from tests.support.processes import RedisServer


async def _calls(addr: str, requests: list[list[bytes]]) -> list[bytes]:
    backend = Backend(addr, "r1", BackendConfig())
    try:
        # Issued together: one write, and the replies come back in as few reads as they fit.
        futures = [backend.call(args) for args in requests]
        return [await f for f in futures]
    finally:
        await backend.close()


def test_background_calls_get_bytes_for_big_replies_read_together(redis1: RedisServer) -> None:
    values = [bytes([97 + i]) * size for i, size in enumerate([20_000, 40_000, 70_000, 5])]
    client = redis1.client()
    for i, value in enumerate(values):
        client.set(f"v{i}", value)
    requests = [[b"GET", b"v%d" % i] for i in range(len(values))] * 3
    got = uvloop.run(_calls(redis1.addr, requests))
    assert [type(reply) for reply in got] == [bytes] * len(requests)
    assert got == [b"$%d\r\n%s\r\n" % (len(v), v) for v in values] * 3
