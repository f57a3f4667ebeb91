"""Memory stays bounded per client and per proxy, and comes back after the abusers leave.

The proxy runs as its own process so that its RSS is its own. Abusive clients pipeline GETs of
100 KB values and never read. (Before 7be77e8 one such client took the proxy to about 1 GB and
most of it stayed resident after it left.) Loopback only; each abuse is bounded in time.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import RedisServer, free_port, port_open, redis_servers, wait_until
from tests.support.wire import encode

MIB = 1024 * 1024
VALUE_BYTES = 100 * 1024
ABUSE_S = 3.0


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def servers() -> Iterator[list[RedisServer]]:
    with redis_servers(2) as found:
        for s in found:
            c = s.client()
            for i in range(40):
                c.set(f"big:{i}", os.urandom(VALUE_BYTES))
        yield found


class Proxy:
    def __init__(self, servers: list[RedisServer], tmp: Path, client_yaml: str) -> None:
        self.port, self.admin = free_port(), free_port()
        cfg = tmp / "proxy.yaml"
        cfg.write_text(
            f"listen: 127.0.0.1:{self.port}\nadmin: 127.0.0.1:{self.admin}\n"
            f"client:\n{client_yaml}pools:\n  main:\n    servers:\n"
            + "".join(f"      - {s.addr}:1 s{i}\n" for i, s in enumerate(servers))
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "-c", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: port_open(self.port), 20, "proxy listening")

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def settled_rss(self) -> int:
        """RSS once two samples 0.3 s apart agree within 1 MiB."""
        last = [rss(self.proc.pid)]

        def steady() -> bool:
            time.sleep(0.3)
            now = rss(self.proc.pid)
            ok = abs(now - last[0]) < MIB
            last[0] = now
            return ok

        wait_until(steady, 10, "RSS to settle")
        return last[0]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Pinger(threading.Thread):
    """A bystander: one PING every 5 ms, each answer timed."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.halt = threading.Event()
        self.samples: list[float] = []
        self.bad: list[bytes] = []

    def run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            while not self.halt.is_set():
                start = time.perf_counter()
                sock.sendall(encode(["PING"]))
                got = sock.recv(64)
                self.samples.append(time.perf_counter() - start)
                if got != b"+PONG\r\n":
                    self.bad.append(got)
                time.sleep(0.005)

    def p99_ms(self) -> float:
        s = sorted(self.samples)
        return s[int(0.99 * (len(s) - 1))] * 1000


def abuse(port: int, clients: int, peak: list[int], pid: int, payload: bytes | None = None) -> None:
    """Non-reading clients pipelining GETs of big values for ABUSE_S; peak RSS sampled."""
    if payload is None:
        payload = b"".join(encode(["GET", f"big:{i % 40}"]) for i in range(500))
    socks = []
    for _ in range(clients):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        socks.append(s)
    deadline = time.monotonic() + ABUSE_S
    while time.monotonic() < deadline:
        for s in socks:
            with contextlib.suppress(BlockingIOError, ConnectionError):
                s.send(payload)
        peak.append(rss(pid))
        time.sleep(0.02)
    for s in socks:
        s.close()


def run_abuse(proxy: Proxy, clients: int) -> tuple[int, int, Pinger]:
    idle = proxy.settled_rss()
    pinger = Pinger(proxy.port)
    pinger.start()
    peak: list[int] = []
    try:
        abuse(proxy.port, clients, peak, proxy.proc.pid)
    finally:
        pinger.halt.set()
        pinger.join(10)
    return idle, max(peak), pinger


def test_a_non_reading_client_holds_at_most_its_budget(
    servers: list[RedisServer], tmp_path: Path
) -> None:
    budget = 8 * MIB
    proxy = Proxy(servers, tmp_path, f"  max_output_buffer_bytes: {budget}\n")
    try:
        idle, peak, pinger = run_abuse(proxy, 2)
        assert peak - idle <= 2 * budget + 4 * MIB, (idle, peak)
        assert pinger.bad == []
        assert pinger.p99_ms() < 50, pinger.p99_ms()
        # The memory comes back: within 20 % of idle, 10 s after the abusers left.
        wait_until(lambda: rss(proxy.proc.pid) <= idle * 1.2, 10, "RSS back near idle")
    finally:
        proxy.stop()


def test_the_proxy_wide_budget_stops_reading_the_biggest_holders(
    servers: list[RedisServer], tmp_path: Path
) -> None:
    proxy = Proxy(servers, tmp_path, f"  max_memory_bytes: {16 * MIB}\n")
    try:
        throttled: list[float] = []
        watcher_stop = threading.Event()

        def watch() -> None:
            while not watcher_stop.is_set():
                throttled.append(proxy.metric("shardproxy_clients_throttled"))
                throttled.append(proxy.metric('shardproxy_client_errors_total{kind="memory"}'))
                time.sleep(0.1)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            idle, peak, pinger = run_abuse(proxy, 3)
        finally:
            watcher_stop.set()
            watcher.join(10)
        assert max(throttled) > 0, "the guard never acted"
        # Each client is still bounded by its own budget (default 64 MiB).
        assert peak - idle <= 3 * 64 * MIB + 16 * MIB, (idle, peak)
        assert pinger.bad == []
        wait_until(lambda: rss(proxy.proc.pid) <= idle * 1.2, 10, "RSS back near idle")
        wait_until(lambda: proxy.metric("shardproxy_clients_throttled") == 0, 5, "unthrottled")
    finally:
        proxy.stop()


def test_a_big_set_streams_through(servers: list[RedisServer], tmp_path: Path) -> None:
    # 200 MB: before 7be77e8's successor the proxy assembled it (RSS +2.5 GB for 500 MB, and
    # every other client waited 2 s); now it goes through as it arrives.
    size = 200 * MIB
    proxy = Proxy(servers, tmp_path, "  max_connections: 100\n")
    try:
        idle = proxy.settled_rss()
        pinger = Pinger(proxy.port)
        pinger.start()
        peak: list[int] = []
        chunk = b"v" * MIB
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as up:
            up.sendall(b"*3\r\n$3\r\nSET\r\n$6\r\nbigset\r\n$%d\r\n" % size)
            for _ in range(size // MIB):
                up.sendall(chunk)
                peak.append(rss(proxy.proc.pid))
            up.sendall(b"\r\n" + encode(["STRLEN", "bigset"]) + encode(["DEL", "bigset"]))
            expected = b"+OK\r\n:%d\r\n:1\r\n" % size
            got = b""
            while len(got) < len(expected):
                got += up.recv(64) or b"<closed>"
            assert got == expected
        pinger.halt.set()
        pinger.join(10)
        assert max(peak) - idle <= 32 * MIB, (idle, max(peak))
        assert pinger.bad == []
        assert pinger.p99_ms() < 50, pinger.p99_ms()
    finally:
        proxy.stop()


def test_a_first_burst_of_big_gets_does_not_stall_a_shared_backend(
    servers: list[RedisServer], tmp_path: Path
) -> None:
    """Non-reading clients whose first burst asks for 2 MB values: what they may have in flight
    is bounded before their first reply is seen (a slow start), so the shared backend
    connections never carry a gigabyte for them and a bystander's INCRs on the same backends
    keep being answered (they used to time out after command_timeout_ms)."""
    value = b"v" * (2 * MIB)
    for s in servers:
        s.client().set("huge", value)  # whichever backend the proxy routes it to
    proxy = Proxy(servers, tmp_path, "")
    errors: list[bytes] = []
    slowest = [0.0]
    halt = threading.Event()

    def bystander() -> None:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            i = 0
            while not halt.is_set():
                start = time.perf_counter()
                sock.sendall(encode(["INCR", f"bystander:{i % 16}"]))
                got = sock.recv(256)
                slowest[0] = max(slowest[0], time.perf_counter() - start)
                if not got.startswith(b":"):
                    errors.append(got)
                i += 1

    try:
        idle = proxy.settled_rss()
        watcher = threading.Thread(target=bystander, daemon=True)
        watcher.start()
        peak: list[int] = []
        abuse(proxy.port, 4, peak, proxy.proc.pid, encode(["GET", "huge"]) * 50)
        halt.set()
        watcher.join(15)
        assert errors == []
        assert slowest[0] < 1.0, slowest[0]  # command_timeout_ms is 2000 by default
        assert max(peak) - idle <= 4 * 64 * MIB + 64 * MIB, (idle, max(peak))  # within budgets
        wait_until(lambda: rss(proxy.proc.pid) <= idle * 1.3, 10, "RSS back near idle")
    finally:
        proxy.stop()
