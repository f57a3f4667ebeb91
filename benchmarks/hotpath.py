"""The proxy's whole per-request Python path, without sockets: CPU µs per request.

    python benchmarks/hotpath.py [--requests N] [--repeat R] [--hash NAME] [--db N] [--routes N]
                                 [--extra YAML] [--acl-user KEYS]

A real ClientConnection, RouteTable, Backend and BackendConnection (the same objects `serve` uses)
over in-memory transports: each round feeds a client read of `depth` GET requests (or SET 64 B),
runs the event loop once so the backend write is flushed, feeds the three backends' replies, and
lets the client write its replies. What is left out is only the kernel and uvloop's own socket
work, so the figure is the part of the proxy's cost that Python code decides, and it is steady
on a noisy machine (best of --repeat). `run.py` measures the whole thing against nutcracker.
--db N: the clients SELECTed db N (their backend connections are those of db N's lane).
--acl-user KEYS: the clients are an ACL user (client.users) of '+@all -@dangerous -@admin' and
the key rules KEYS: with `~*` they keep the fast path, with key patterns (`~key:*`) it is taken
once each request's key matches.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any, cast

if __package__ in (None, ""):  # run as a script: make `proxy` importable from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvloop

from proxy.codec.resp import encode_request
from proxy.commands.session import ClientRow, lane_for
from proxy.commands.users import compile_users
from proxy.config.schema import parse_config
from proxy.net.backend import Backend
from proxy.net.client import ClientConnection
from proxy.net.connection import BackendConnection
from proxy.net.defence import Defences
from proxy.net.fence import MigrationState
from proxy.net.metrics import ProxyMetrics
from proxy.net.pool import BackendPool
from proxy.net.route import RouteRef
from proxy.routing.topology import build_topology

VALUE = b"x" * 64
ACL_USER = "{name: bench, password: pw, commands: '+@all -@dangerous -@admin', keys: '%s'}"


class MemoryTransport(asyncio.Transport):
    """Keeps what is written; reports no write buffer, so nothing pauses."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Host:
    """The ClientHost a ProxyServer would be, minus the listener."""

    def __init__(
        self, hash_name: str, routes: int = 0, extra: str = "", acl_keys: str = "~*"
    ) -> None:
        text = (
            "listen: 127.0.0.1:1\nbackend:\n  connections: 1\n"
            f"client:\n  users: [{ACL_USER % acl_keys}]\npools:\n  bench:\n"
            f"    hash: {hash_name}\n    hash_tag: '{{}}'\n    servers:\n"
            "      - 127.0.0.1:7001:1 r1\n      - 127.0.0.1:7002:1 r2\n"
            "      - 127.0.0.1:7003:1 r3\n"
        )
        if routes:  # prefix routes no benchmark key matches (the common case), of varied lengths
            text += "  queues: {servers: ['127.0.0.1:7004']}\nroute: bench\nroutes:\n"
            text += "".join(
                f"  - {{prefix: 'q{i}:{'x' * (i % 3)}', pool: queues}}\n" for i in range(routes)
            )
        text += extra  # top-level keys: after the pools and routes
        config = parse_config(text)
        self.client_config = config.client
        self.users = compile_users(config.client)
        self.max_clients = config.client.max_connections
        self.allow_flush = False
        self.allow_config_set: tuple[str, ...] = ()
        self.databases = config.databases
        self.slowlog_ms = 0.0
        self.clients: set[ClientConnection] = set()
        self.metrics = ProxyMetrics()
        self.pool = BackendPool()
        self.routes = self.pool.sync(build_topology(config, 1, "bench"))
        self.route_ref = RouteRef(self.routes)
        self.migration = MigrationState(lambda: self.routes)
        self.defences = Defences(config.defences)
        self._ids = 0

    def next_client_id(self) -> int:
        self._ids += 1
        return self._ids

    def info_sections(self) -> list[tuple[str, list[tuple[str, str]]]]:
        return []

    def client_rows(self) -> list[ClientRow]:
        return []

    def client_row(self, client_id: int) -> ClientRow | None:
        return None

    def kill_client(self, client_id: int) -> None:
        pass

    def unblock_client(self, client_id: int, error: bool) -> bool:
        return False


def connect_backend(backend: Backend, db: int) -> tuple[BackendConnection, MemoryTransport]:
    """A ready RESP2 connection to db `db` on an in-memory transport (handshake answered)."""
    lane = lane_for(2, db)
    conn = BackendConnection(backend, lane)
    transport = MemoryTransport()
    conn.connection_made(transport)
    conn.data_received(b"+OK\r\n" * (2 if db else 1))  # SELECT, CLIENT SETNAME
    backend._conns[lane] = [conn]  # a benchmark wiring what Backend._connect would
    return conn, transport


def reply_for(request: list[bytes]) -> bytes:
    return b"$64\r\n" + VALUE + b"\r\n" if request[0] == b"GET" else b"+OK\r\n"


async def measure(
    command: bytes,
    depth: int,
    fan_in: int,
    total: int,
    hash_name: str,
    db: int = 0,
    routes: int = 0,
    extra: str = "",
    acl_keys: str | None = None,
) -> float:
    """CPU µs per request: rounds of `fan_in` client reads of `depth` requests each, one loop
    iteration (the backends' coalesced writes), one read of replies per backend."""
    host = Host(hash_name, routes, extra, acl_keys or "~*")
    conns = [connect_backend(b, db) for b in host.routes.route_backends]
    clients = []
    for _ in range(fan_in):
        client = ClientConnection(host)
        client.connection_made(MemoryTransport())
        client.session.set_db(db)  # as its SELECT would
        if acl_keys is not None:
            user = host.users.get("bench")
            assert user is not None
            client.session.set_user(user)
        clients.append(client)
    node_for = host.routes.node_for
    rounds: list[tuple[list[bytes], dict[int, bytes]]] = []
    for r in range(64):
        reads = []
        replies: dict[int, list[bytes]] = {}
        for c in range(fan_in):
            requests = []
            for i in range(depth):
                key = b"key:%012d" % (((r * fan_in + c) * depth + i) * 7919 % 100000)
                request = [command, key] if command == b"GET" else [command, key, VALUE]
                requests.append(request)
                replies.setdefault(node_for(key), []).append(reply_for(request))
            reads.append(b"".join(encode_request(a) for a in requests))
        rounds.append((reads, {i: b"".join(rs) for i, rs in replies.items()}))
    count = total // (depth * fan_in)
    started = time.process_time()
    for r in range(count):
        reads, replies_by_backend = rounds[r & 63]
        for client, data in zip(clients, reads, strict=True):
            client.data_received(data)
        await asyncio.sleep(0)  # one loop iteration: the backends' coalesced writes go out
        for index, reply in replies_by_backend.items():
            conn, transport = conns[index]
            transport.written.clear()
            conn.data_received(reply)
        for client in clients:
            assert client.transport is not None
            cast(MemoryTransport, client.transport).written.clear()
    elapsed = time.process_time() - started
    assert not any(c.pending for c in clients), "every request answered"
    return elapsed / (count * depth * fan_in) * 1e6


CASES = ((1, 16), (16, 4))  # (depth, client reads per loop iteration)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--hash", default="crc32a")
    parser.add_argument("--db", type=int, default=0)
    parser.add_argument("--routes", type=int, default=0, help="prefix routes in the config")
    parser.add_argument(
        "--extra", default="", help="config YAML appended, e.g. 'hotkeys: {enabled: false}'"
    )
    parser.add_argument("--acl-user", metavar="KEYS", help="clients as an ACL user (see above)")
    args = parser.parse_args(argv)
    who = f"an ACL user with keys {args.acl_user}" if args.acl_user else "the default user"
    print(
        f"hash {args.hash}, db {args.db}, {args.routes} prefix routes, clients as {who}; "
        f"CPU µs per request, best of {args.repeat}; {args.extra or 'defaults'}"
    )
    for command in (b"GET", b"SET"):
        for depth, fan_in in CASES:
            best = min(
                uvloop.run(
                    measure(
                        command,
                        depth,
                        fan_in,
                        args.requests,
                        args.hash,
                        args.db,
                        args.routes,
                        args.extra,
                        args.acl_user,
                    )
                )
                for _ in range(args.repeat)
            )
            label = f"{command.decode()} -P {depth}, {fan_in} client reads per loop iteration"
            print(f"{label:<48} {best:6.2f} µs/req")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
