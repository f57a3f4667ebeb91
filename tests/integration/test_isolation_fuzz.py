"""No byte sequence a client sends may harm another client: a bounded fuzzer.

Bystander clients run a checked SET/GET load over every backend while an attacker sends mutated
requests (lengths with signs, zeros, spaces and underscores, flipped, inserted and deleted bytes,
truncations, junk between requests). No bystander may ever see an error or a wrong value, and the
proxy's shared backend connections must all survive: every connection named `shardproxy` that a
backend had before the attack is still there after it (Redis closes a connection that sends it a
protocol error), and the proxy counted no backend connection failure.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from tests.support.processes import RedisServer, free_port, redis_servers, wait_until
from tests.support.runner import ProxyThread, running_proxy, simple_config
from tests.support.wire import encode

ATTACK_S = 6.0  # bounded in time
ATTACK_MAX_REQUESTS = 4000  # and in count
BYSTANDERS = 4

SEEDS: list[list[bytes | str]] = [
    ["GET", "k"],
    ["SET", "k", "value"],
    ["MGET", "a", "b", "c", "d"],
    ["MSET", "a", "1", "b", "2"],
    ["DEL", "a", "b"],
    ["HSET", "h", "f", "v"],
    ["INCR", "n"],
    ["EXPIRE", "k", "100"],
    ["EVAL", "return 1", "1", "k"],
    ["LPUSH", "l", "x", "y"],
    ["PING"],
    ["ECHO", "hi"],
    ["SCAN", "0", "COUNT", "10"],
]
LENGTH_FORMS = [b"+", b"0", b" ", b"-", b"_0", b"1_", b"\t", b"00", b"-0", b"99999999999"]


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(7)
        at = rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # flip a byte
            buf[min(at, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:  # insert a byte (often protocol punctuation)
            buf[at:at] = bytes([rng.choice(b"*$\r\n+-:_0123456789 " + bytes([rng.randrange(256)]))])
        elif op == 2 and buf:  # delete a byte
            del buf[min(at, len(buf) - 1)]
        elif op == 3:  # tamper with a length: after a `$` or `*`
            marks = [i for i, c in enumerate(buf) if c in b"$*"]
            if marks:
                i = rng.choice(marks) + 1
                buf[i:i] = rng.choice(LENGTH_FORMS)
        elif op == 4:  # truncate
            del buf[at:]
        elif op == 5:  # junk or an inline line between requests
            buf += rng.choice([b"\r\n", b"\n", b"PING\r\n", b"*1\r\n", b"$3\r\n", b'"unbalanced'])
        else:  # duplicate a slice
            j = rng.randrange(len(buf) + 1)
            buf[at:at] = buf[min(at, j) : max(at, j)][:64]
    return bytes(buf)


def attack(port: int, seed: int) -> int:
    rng = random.Random(seed)
    deadline = time.monotonic() + ATTACK_S
    sent = 0
    while time.monotonic() < deadline and sent < ATTACK_MAX_REQUESTS:
        batch = b"".join(mutate(rng, encode(rng.choice(SEEDS))) for _ in range(rng.randrange(1, 6)))
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.settimeout(0.05)
            try:
                sock.sendall(batch + encode(["PING"]))
                while sock.recv(65536):
                    pass
            except (TimeoutError, ConnectionError):
                pass  # a request still waiting for its bytes, or closed after a protocol error
        sent += 1
    return sent


class Bystander(threading.Thread):
    def __init__(self, port: int, index: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.index = index
        self.stop = stop
        self.errors: list[str] = []
        self.done = 0

    def run(self) -> None:
        r = redis.Redis(port=self.port, protocol=2 + self.index % 2, socket_timeout=5)
        i = 0
        while not self.stop.is_set():
            key = f"by{self.index}:{i % 64}"
            try:
                pipe = r.pipeline(transaction=False)
                pipe.set(key, i).get(key).mget([key, f"by{self.index}:{(i + 7) % 64}"])
                out = pipe.execute()
                if out[0] is not True or out[1] != str(i).encode():
                    self.errors.append(f"{key}: {out}")
            except redis.RedisError as exc:
                self.errors.append(f"{key}: {exc!r}")
            i += 1
            self.done += 1


@pytest.fixture(scope="module")
def backends() -> Iterator[list[RedisServer]]:
    with redis_servers(2) as found:
        yield found


def shared_connection_ids(servers: list[RedisServer]) -> set[tuple[str, str]]:
    found = set()
    for s in servers:
        for c in s.client().client_list():
            if c.get("name") == "shardproxy":
                found.add((s.addr, c["id"]))
    return found


@pytest.mark.parametrize("seed", [1, 2])
def test_mutated_requests_never_reach_a_bystander(backends: list[RedisServer], seed: int) -> None:
    config = simple_config([b.addr for b in backends], free_port(), free_port())
    with running_proxy(config) as proxy:
        run_attack_with_bystanders(proxy, backends, seed)


def run_attack_with_bystanders(proxy: ProxyThread, backends: list[RedisServer], seed: int) -> None:
    stop = threading.Event()
    bystanders = [Bystander(proxy.port, i, stop) for i in range(BYSTANDERS)]
    for b in bystanders:
        b.start()
    # Every shared connection (RESP2 and RESP3, each backend) is open before the snapshot.
    wait_until(lambda: len(shared_connection_ids(backends)) >= 2 * len(backends), 10, "warm up")
    wait_until(lambda: all(b.done > 10 for b in bystanders), 10, "bystanders running")
    before = shared_connection_ids(backends)
    try:
        sent = attack(proxy.port, seed)
    finally:
        stop.set()
        for b in bystanders:
            b.join(10)
    assert sent > 100
    assert [e for b in bystanders for e in b.errors] == []
    assert before <= shared_connection_ids(backends), "a shared backend connection was closed"
    server = proxy.server
    assert server is not None
    for backend in server.pool.backends.values():
        assert backend.up
        assert backend.stats.connection == 0 and backend.stats.timeout == 0
