"""proxy.hashing places keys exactly where a real nutcracker (twemproxy 0.5) does.

Each case starts nutcracker in front of real redis-servers, SETs a few thousand keys through it,
then asks every backend which keys it holds and checks each against Ring(...).node_for(key).
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import hiredis
import pytest

from proxy.routing.ring import Ring, hash_fn, ketama_label, ketama_points
from tests.support.processes import (
    NUTCRACKER,
    RedisServer,
    free_port,
    port_open,
    redis_command,
    redis_servers,
    wait_until,
)

pytestmark = pytest.mark.skipif(not os.access(NUTCRACKER, os.X_OK), reason="nutcracker missing")

N_KEYS = 2500
PIPELINE_DEPTH = 500
# Pairs of names with a ketama point in common (found by search), and the one twemproxy gives the
# tie to: conf.c sorts servers by name, shorter first, then bytewise, and qsort keeps that order.
TIES = [
    (("tie253", "tie397"), 667653269, "tie253"),
    (("z785", "a100117"), 2152492440, "z785"),
]


@dataclass(frozen=True)
class Pool:
    """One nutcracker pool: its servers are backends[i] for i in `backends`."""

    hash_name: str
    distribution: str
    weights: tuple[int, ...]
    names: tuple[str, ...] | None = None
    hash_tag: bytes = b""
    backends: tuple[int, ...] = ()

    def servers(self) -> tuple[int, ...]:
        return self.backends or tuple(range(len(self.weights)))


def make_keys(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    keys = [b"", *(b"key:%d" % i for i in range(N_KEYS))]  # twemproxy hashes b"" to 0
    keys += [
        b"user:{%d}:%s" % (i % 40, rng.choice([b"a", b"bb", b"{}", b"}{"])) for i in range(300)
    ]
    keys += [b"{}" + b"%d" % i for i in range(50)] + [b"a{}b%d" % i for i in range(50)]
    keys += [b"{x%d}{y}" % i for i in range(50)] + [b"{open%d" % i for i in range(50)]
    # Bytes >= 0x80: nc_fnv.c widens them as signed chars.
    keys += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 24))) for _ in range(400)]
    return list(dict.fromkeys(keys))


def resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def set_through(port: int, keys: Sequence[bytes]) -> list[object]:
    """SET every key (value = key) through a pipelining raw socket; return the replies in order."""
    replies: list[object] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = hiredis.Reader()
        for first in range(0, len(keys), PIPELINE_DEPTH):
            chunk = keys[first : first + PIPELINE_DEPTH]
            sock.sendall(b"".join(resp(b"SET", k, k) for k in chunk))
            want = len(replies) + len(chunk)
            while len(replies) < want:
                reply = reader.gets()
                if reply is False:
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionError("nutcracker closed the connection")
                    reader.feed(data)
                else:
                    replies.append(reply)
    return replies


@pytest.fixture(scope="module")
def backends() -> Iterator[list[RedisServer]]:
    with redis_servers(5) as servers:
        yield servers


class NutcrackerFactory:
    """Starts nutcracker processes from (pool, server lines) and stops them all at teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = str(workdir)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, pool: Pool, server_lines: Sequence[str]) -> int:
        listen = free_port()
        conf = [
            "pool:",
            f"  listen: 127.0.0.1:{listen}",
            f"  hash: {pool.hash_name}",
            f"  distribution: {pool.distribution}",
            "  redis: true",
            "  auto_eject_hosts: false",
            "  timeout: 2000",
            "  preconnect: false",
        ]
        if pool.hash_tag:
            conf.append(f'  hash_tag: "{pool.hash_tag.decode()}"')
        conf += ["  servers:", *(f"    - {line}" for line in server_lines)]
        fd, path = tempfile.mkstemp(suffix=".yml", dir=self.workdir)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(conf) + "\n")
        args = [NUTCRACKER, "-c", path, "-s", str(free_port()), "-a", "127.0.0.1"]
        args += ["-o", path + ".log", "-p", path + ".pid"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        wait_until(lambda: proc.poll() is not None or port_open(listen), 10, "nutcracker listening")
        assert proc.poll() is None, Path(path + ".log").read_text()
        return listen

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def nutcracker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NutcrackerFactory]:
    factory = NutcrackerFactory(tmp_path_factory.mktemp("nutcracker"))
    yield factory
    factory.stop()


def flush(backends: Sequence[RedisServer]) -> None:
    for b in backends:
        assert redis_command(b.port, "FLUSHALL") == b"OK"


def stored_keys(backend: RedisServer) -> set[bytes]:
    reply = redis_command(backend.port, "KEYS", "*")
    assert isinstance(reply, list)
    return set(reply)


CASES = [
    Pool("fnv1a_64", "ketama", (1, 1, 1)),
    Pool("md5", "ketama", (1, 1, 1)),
    Pool("fnv1a_64", "ketama", (1, 1, 1), names=("alpha", "beta", "gamma")),
    Pool("md5", "ketama", (1, 1, 1, 1), names=("redis-a", "redis-b", "redis-c", "redis-d")),
    Pool("fnv1a_64", "ketama", (1, 2, 3)),
    Pool("md5", "ketama", (29, 30, 1)),  # float32 points: 228/240/8 where exact math gives 232
    Pool("md5", "ketama", (1, 2, 3), names=("s1", "s2", "s3")),
    Pool("fnv1a_64", "ketama", (3, 1, 4, 1, 5), names=("n0", "n1", "n2", "n3", "n4")),
    Pool("fnv1a_64", "ketama", (1, 1, 1), hash_tag=b"{}"),
    Pool("fnv1a_64", "modula", (1, 2, 3)),
    Pool("fnv1a_64", "modula", (1, 2, 3, 1), names=("zeta", "alpha", "b", "mid")),
    Pool("md5", "modula", (2, 1, 1, 3), hash_tag=b"{}"),
    Pool("crc32a", "ketama", (1, 1, 1), hash_tag=b"{}"),
    Pool("crc32a", "modula", (1, 2, 3)),
    Pool("crc32", "ketama", (1, 1, 1)),
    Pool("crc32", "modula", (2, 1, 1)),
]


def case_id(pool: Pool) -> str:
    parts = [pool.hash_name, pool.distribution, "w" + "-".join(map(str, pool.weights))]
    parts += ["named"] if pool.names else []
    parts += ["tag"] if pool.hash_tag else []
    return ",".join(parts)


def check_placement(
    backends: Sequence[RedisServer], nutcracker: NutcrackerFactory, pool: Pool, seed: int
) -> None:
    servers = [backends[i] for i in pool.servers()]
    names: Sequence[str | None] = pool.names or [None] * len(servers)
    lines = [
        f"{s.addr}:{w}" + (f" {n}" if n else "")
        for s, w, n in zip(servers, pool.weights, names, strict=True)
    ]
    labels = [ketama_label("127.0.0.1", s.port, n) for s, n in zip(servers, names, strict=True)]
    ring = Ring(labels, pool.weights, pool.hash_name, pool.distribution, pool.hash_tag)
    flush(backends)
    keys = make_keys(seed)
    port = nutcracker.start(pool, lines)
    assert set_through(port, keys) == [b"OK"] * len(keys)
    expected: list[set[bytes]] = [set() for _ in servers]
    for key in keys:
        expected[ring.node_for(key)].add(key)
    for i, server in enumerate(servers):
        got = stored_keys(server)
        assert got == expected[i], f"{labels[i]}: {len(got ^ expected[i])} keys misplaced"


@pytest.mark.parametrize("pool", CASES, ids=case_id)
def test_keys_land_where_nutcracker_puts_them(
    backends: list[RedisServer], nutcracker: NutcrackerFactory, pool: Pool
) -> None:
    check_placement(backends, nutcracker, pool, seed=len(pool.weights))


@pytest.mark.parametrize("listed_reversed", [False, True])
@pytest.mark.parametrize(("names", "point", "winner"), TIES, ids=["same-length", "shorter-wins"])
def test_tied_points_go_to_the_label_sorting_first(
    backends: list[RedisServer],
    nutcracker: NutcrackerFactory,
    names: tuple[str, str],
    point: int,
    winner: str,
    listed_reversed: bool,
) -> None:
    if listed_reversed:
        names = (names[1], names[0])
    points, _ = ketama_points(names, (1, 1))
    arc_start = points[points.index(point) - 1]  # keys hashing into (arc_start, point] hit the tie
    md5 = hash_fn("md5")
    tied = [k for k in (b"tie:%d" % i for i in range(60000)) if arc_start < md5(k) <= point]
    assert len(tied) > 5
    ring = Ring(names, (1, 1), "md5")
    assert {ring.labels[ring.node_for(k)] for k in tied} == {winner}
    pool = Pool("md5", "ketama", (1, 1), names=names, backends=(3, 4))
    lines = [f"{backends[i].addr}:1 {n}" for i, n in zip(pool.backends, names, strict=True)]
    flush(backends)
    port = nutcracker.start(pool, lines)
    assert set_through(port, tied) == [b"OK"] * len(tied)
    assert stored_keys(backends[3 + names.index(winner)]) == set(tied)


def test_unnamed_server_on_11211_is_labelled_by_host_alone(
    backends: list[RedisServer], nutcracker: NutcrackerFactory
) -> None:
    """No redis of ours is on 11211, but its label still places the keys of the two live ones."""
    live = backends[:2]
    lines = ["127.0.0.1:11211:1", *(f"{b.addr}:1" for b in live)]
    labels = [ketama_label("127.0.0.1", 11211, None), *(b.addr for b in live)]
    assert labels[0] == "127.0.0.1"
    ring = Ring(labels, (1, 1, 1), "fnv1a_64")
    port_in_label = Ring(["127.0.0.1:11211", *labels[1:]], (1, 1, 1), "fnv1a_64")
    keys = [b"key:%d" % i for i in range(1500)]
    assert any(ring.node_for(k) != port_in_label.node_for(k) for k in keys)
    flush(backends)
    port = nutcracker.start(Pool("fnv1a_64", "ketama", (1, 1, 1)), lines)
    replies = set_through(port, keys)
    for i, server in enumerate(live, start=1):
        mine = {k for k in keys if ring.node_for(k) == i}
        assert stored_keys(server) == mine
        assert all(r == b"OK" for k, r in zip(keys, replies, strict=True) if k in mine)
