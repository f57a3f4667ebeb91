"""Memory and isolation under abusive clients: the proxy's RSS and a bystander's PING latency.

Starts 2 redis-servers and shardproxy (`serve -c`, one process), then runs each scenario:
- `nonreading`: N clients pipeline GETs of 100 KB values and never read;
- `bigset`: one client SETs a value of `--big-mb` MB;
- `unauth`: with a password set, N unauthenticated clients upload 150 MB each.
For each: the proxy's idle RSS, its peak during the abuse, its RSS 10 s after the abusers left,
and a bystander's PING p50/p99/max (one PING every 5 ms). Loopback only, bounded in time.

    .venv/bin/python benchmarks/abuse.py [--scenario nonreading|bigset|unauth|all] [--clients 3]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.processes import free_port, redis_servers, wait_until  # noqa: E402

VALUE_KB = 100


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def encode(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class Pinger(threading.Thread):
    def __init__(self, port: int, password: bytes | None) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.password = password
        self.stop = threading.Event()
        self.samples: list[float] = []
        self.errors = 0

    def run(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port))
        if self.password is not None:
            sock.sendall(encode(b"AUTH", self.password))
            sock.recv(64)
        while not self.stop.is_set():
            start = time.perf_counter()
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            got = sock.recv(64)
            self.samples.append((time.perf_counter() - start) * 1000)
            if got != b"+PONG\r\n":
                self.errors += 1
            time.sleep(0.005)

    def summary(self) -> str:
        s = sorted(self.samples) or [0.0]
        p = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
        return f"PING p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms, max {s[-1]:.1f} ms"


class PingerProcess:
    """A Pinger in a process of its own: a benchmark client that parses a huge reply holds this
    process's GIL, and a bystander thread here would measure that instead of the proxy."""

    def __init__(self, port: int, password: bytes | None) -> None:
        ctx = multiprocessing.get_context("fork")
        self._stop = ctx.Event()
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=self._run, args=(port, password, send), daemon=True)
        self.samples: list[float] = []
        self.errors = 0

    def _run(self, port: int, password: bytes | None, send: Connection) -> None:
        pinger = Pinger(port, password)
        pinger.start()
        self._stop.wait()
        pinger.stop.set()
        pinger.join()
        send.send((pinger.samples, pinger.errors))

    def start(self) -> None:
        self._proc.start()

    def stop_and_join(self) -> None:
        self._stop.set()
        self.samples, self.errors = self._recv.recv()
        self._proc.join(10)

    summary = Pinger.summary


def watch_peak(pid: int, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        out.append(rss_mib(pid))
        time.sleep(0.05)


def abuse_nonreading(port: int, clients: int, seconds: float) -> None:
    socks = []
    payload = b"".join(encode(b"GET", b"big:%d" % (i % 50)) for i in range(1000))
    for _ in range(clients):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        socks.append(s)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for s in socks:
            with contextlib.suppress(BlockingIOError, ConnectionError):
                s.send(payload)
        time.sleep(0.01)
    for s in socks:
        s.close()


def abuse_bigset(port: int, mb: int) -> None:
    chunk = b"x" * (1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"*3\r\n$3\r\nSET\r\n$6\r\nbigset\r\n$%d\r\n" % (mb << 20))
        for _ in range(mb):
            s.sendall(chunk)
        s.sendall(b"\r\n")
        s.settimeout(30)
        print("  bigset reply:", s.recv(100))
        s.sendall(encode(b"DEL", b"bigset"))
        s.recv(100)


def abuse_unauth(port: int, clients: int, mb: int) -> None:
    def one() -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            try:
                s.sendall(b"*2\r\n$3\r\nSET\r\n$%d\r\n" % (mb << 20))
                chunk = b"x" * (1 << 20)
                for _ in range(mb):
                    s.sendall(chunk)
            except OSError:
                pass

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def run(scenario: str, clients: int, big_mb: int, extra: str) -> None:
    with redis_servers(2) as servers, tempfile.TemporaryDirectory() as tmp:
        port, admin = free_port(), free_port()
        cfg = Path(tmp) / "proxy.yaml"
        password = "client:\n  password: s3cret\n" if scenario == "unauth" else ""
        cfg.write_text(
            f"listen: 127.0.0.1:{port}\nadmin: 127.0.0.1:{admin}\n{password}{extra}"
            "pools:\n  main:\n    servers:\n"
            + "".join(f"      - {s.addr}:1 s{i}\n" for i, s in enumerate(servers))
        )
        for s in servers:
            c = s.client()
            for i in range(50):
                c.set(b"big:%d" % i, os.urandom(VALUE_KB * 1024))
        proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/shardproxy"), "serve", "-c", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_until(lambda: _open(port), 10, "proxy up")
            time.sleep(1)
            idle = rss_mib(proc.pid)
            pinger = Pinger(port, b"s3cret" if password else None)
            pinger.start()
            stop = threading.Event()
            peaks: list[float] = []
            watcher = threading.Thread(target=watch_peak, args=(proc.pid, stop, peaks))
            watcher.start()
            if scenario == "nonreading":
                abuse_nonreading(port, clients, 6.0)
            elif scenario == "bigset":
                abuse_bigset(port, big_mb)
            else:
                abuse_unauth(port, clients, 150)
            time.sleep(10)
            stop.set()
            watcher.join()
            pinger.stop.set()
            pinger.join()
            after = rss_mib(proc.pid)
            print(
                f"{scenario}: RSS idle {idle:.0f} MiB, peak {max(peaks):.0f} MiB, "
                f"10 s after {after:.0f} MiB; bystander {pinger.summary()}, "
                f"errors {pinger.errors}; proxy alive: {proc.poll() is None}"
            )
        finally:
            proc.terminate()
            proc.wait(10)


def _open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="all", choices=["nonreading", "bigset", "unauth", "all"])
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--big-mb", type=int, default=500)
    ap.add_argument("--extra", default="", help="YAML lines added to the proxy config")
    args = ap.parse_args()
    every = ["nonreading", "bigset", "unauth"]
    for scenario in every if args.scenario == "all" else [args.scenario]:
        run(scenario, args.clients, args.big_mb, args.extra)


if __name__ == "__main__":
    main()
