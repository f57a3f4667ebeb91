"""Backend connections against a real redis-server: how replies reach their owners.

Big replies that arrive inside a read with others are handed to client connections as
memoryviews of that read (no copy); every other owner (background jobs' futures, merges) must
get bytes, since it parses or keeps them.
"""

from __future__ import annotations

import time

import redis
import uvloop

from proxy.config.schema import BackendConfig
from proxy.net.backend import Backend
from tests.support.processes import RedisServer, wait_until
from tests.support.runner import proxy_for


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


def test_big_replies_through_the_proxy_to_every_kind_of_owner(
    backends3: list[RedisServer],
) -> None:
    """Big bulk strings are read into buffers of their own: a client connection writes the
    buffer out as it is (ReplyOwner.keep_view), every other owner (a merge, a subscriber, a
    silenced reply) gets bytes or drops it; the replies must be exact and in order."""
    with proxy_for([b.addr for b in backends3]) as p:
        client = redis.Redis(port=p.port)
        sizes = [0, 5, 16_383, 16_384, 70_000, 100_000, 300_000, 2_000_000]
        values = {f"big:{{k{i}}}".encode(): bytes([97 + i % 26]) * n for i, n in enumerate(sizes)}
        for key, value in values.items():
            client.set(key, value)
        keys = list(values)
        for _ in range(3):
            pipe = client.pipeline(transaction=False)
            for key in keys + keys[::-1]:
                pipe.get(key)
            pipe.mget(keys)  # a merge of big replies from three backends
            pipe.ping()
            got = pipe.execute()
            want = [values[k] for k in keys + keys[::-1]]
            assert got[: len(want)] == want
            assert got[len(want)] == [values[k] for k in keys]
            assert got[-1] is True
        # A silenced big reply (CLIENT REPLY SKIP) is dropped, the next one written.
        conn = client.connection_pool.get_connection()
        conn.send_command("CLIENT", "REPLY", "SKIP")
        conn.send_command("GET", keys[6])
        conn.send_command("GET", keys[5])
        assert conn.read_response() == values[keys[5]]
        client.connection_pool.release(conn)
        # A big message to a subscriber.
        sub = redis.Redis(port=p.port).pubsub(ignore_subscribe_messages=True)
        sub.subscribe("big-channel")
        # Published until the subscription is in place (0 receivers before): delivered once.
        wait_until(lambda: client.publish("big-channel", values[keys[6]]) == 1, 10, "subscribed")
        deadline = time.monotonic() + 10
        message = None
        while message is None and time.monotonic() < deadline:
            message = sub.get_message(timeout=1)
        assert message is not None and message["data"] == values[keys[6]]
        sub.close()
