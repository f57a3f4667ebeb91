"""A client flood under a low open files limit: the client limit is sized to leave a reserve, so
extra clients get Redis's `max number of clients reached`, connected ones keep working on every
key, and health checks keep every backend up (a real proxy process under RLIMIT_NOFILE 256)."""

from __future__ import annotations

import errno
import json
import resource
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import proxy.net.probe
from tests.support.processes import RedisServer, free_port, port_open, redis_command, wait_until
from tests.support.runner import running_proxy
from tests.support.wire import Err, RespConn

NOFILE = 256
CLIENTS = 400


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def _status(admin: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=2) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def _connections_received(server: RedisServer) -> int:
    info = redis_command(server.port, "INFO", "stats").decode()
    line = next(x for x in info.splitlines() if x.startswith("total_connections_received:"))
    return int(line.split(":")[1])


def _connect(port: int) -> tuple[RespConn, object]:
    conn = RespConn(port, timeout_s=5)
    return conn, conn.call("PING")[1]


def _all_up_for_health_checks(admin: int, backends: list[RedisServer], checks: int) -> None:
    """Every backend up on every look while each backend sees `checks` more health checks."""
    start = [_connections_received(b) for b in backends]

    def done() -> bool:
        rows = _status(admin)["backends"]
        assert all(r["up"] for r in rows), rows
        now = [_connections_received(b) for b in backends]
        return all(n - s >= checks for n, s in zip(now, start, strict=True))

    wait_until(done, 20, f"{checks} health checks with every backend up")


def test_client_flood_under_low_fd_limit(backends3: list[RedisServer], tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    cfg = tmp_path / "p.yaml"
    servers = ", ".join(b.addr for b in backends3)
    cfg.write_text(
        f"listen: 127.0.0.1:{port}\nadmin: 127.0.0.1:{admin}\n"
        "backend:\n  health_check_interval_ms: 100\n  failure_threshold: 1\n"
        f"pools:\n  main:\n    servers: [{servers}]\n"
    )
    log = (tmp_path / "proxy.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "-c", str(cfg)],
        stderr=log,
        preexec_fn=_low_nofile,
    )
    clients: list[RespConn] = []
    try:
        wait_until(lambda: port_open(port) and port_open(admin), 20, "proxy listening")
        limit = _status(admin)["max_clients"]
        assert 0 < limit < NOFILE
        refused = 0
        for _ in range(CLIENTS):
            conn, reply = _connect(port)
            if reply == Err("ERR max number of clients reached"):
                refused += 1
                conn.close()
            else:
                assert reply == ("+", b"PONG"), reply
                clients.append(conn)
        assert len(clients) == limit and refused == CLIENTS - limit
        for i, conn in enumerate(clients):  # keys on every backend
            assert conn.call("SET", f"fd:{i}", i)[1] == ("+", b"OK")
            assert conn.call("GET", f"fd:{i}")[1] == str(i).encode()
        _all_up_for_health_checks(admin, backends3, 5)
        # A burst of connections at once: accepted faster than refused ones close, they may run
        # the process out of descriptors for a moment; the listener and backends must survive.
        burst = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
        for s in burst:
            s.close()
        _all_up_for_health_checks(admin, backends3, 5)
        for i, conn in enumerate(clients):
            assert conn.call("GET", f"fd:{i}")[1] == str(i).encode()
        clients.pop().close()
        wait_until(lambda: _status(admin)["clients"] == limit - 1, 10, "a slot freed")
        conn, reply = _connect(port)
        clients.append(conn)
        assert reply == ("+", b"PONG")  # the freed slot is taken again
        status = _status(admin)
        assert status["clients"] == limit and all(b["up"] for b in status["backends"])
    finally:
        for conn in clients:
            conn.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        log.close()
    text = (tmp_path / "proxy.log").read_text()
    assert f"client.max_connections lowered to {limit}" in text, text
    assert " down" not in text, text


@pytest.mark.pure_only  # patches a compiled module's internals
def test_health_checks_failing_for_want_of_fds_keep_backends_up(
    backends3: list[RedisServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = (
        f"listen: 127.0.0.1:{free_port()}\nadmin: 127.0.0.1:{free_port()}\n"
        "backend:\n  health_check_interval_ms: 50\n  failure_threshold: 1\n"
        f"pools:\n  main:\n    servers: [{', '.join(b.addr for b in backends3)}]\n"
    )

    async def out_of_fds(*args: object) -> bytes | None:
        raise OSError(errno.EMFILE, "Too many open files")

    with running_proxy(config) as p, RespConn(p.port) as client:
        assert p.server is not None
        backends = list(p.server.pool.backends.values())
        monkeypatch.setattr(proxy.net.probe, "call_once", out_of_fds)

        def checked_while_up() -> bool:
            assert all(b.up for b in backends)
            return all(b.stats.local >= 5 for b in backends)

        wait_until(checked_while_up, 10, "5 health checks without fds per backend, all up")
        assert client.call("SET", "fd:k", "v")[1] == ("+", b"OK")
