"""Real redis-server / nutcracker processes on free loopback ports.

Every process started here is owned by a fixture and stopped at teardown; waits are on conditions
with deadlines, never bare sleeps.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
NUTCRACKER = shutil.which("nutcracker") or "/usr/sbin/nutcracker"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout_s: float = 10.0, what: str = "") -> None:
    """Poll `predicate` until it is truthy; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        with contextlib.suppress(Exception):
            if predicate():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def holds_for(predicate: Callable[[], object], seconds: float, what: str) -> None:
    """Assert that `predicate` stays truthy for `seconds`: how a non-event (no spurious reload)
    is checked, by polling to a deadline."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), what
        time.sleep(0.05)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def redis_command(port: int, *args: bytes | str, timeout_s: float = 2.0) -> bytes:
    """One raw RESP command to a server; returns the raw reply bytes (first reply only)."""
    import hiredis

    payload = [a.encode() if isinstance(a, str) else a for a in args]
    wire = b"*%d\r\n" % len(payload) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in payload)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(wire)
        reader = hiredis.Reader()
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            reader.feed(data)
            reply = reader.gets()
            if reply is not False:
                return reply  # type: ignore[no-any-return]


@dataclass
class RedisServer:
    port: int
    dir: str
    proc: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        args = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            *self.extra,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: redis_command(self.port, "PING") == b"PONG", 10, f"redis on {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis(port=self.port, protocol=2)


@contextlib.contextmanager
def redis_servers(n: int, *extra: str) -> Iterator[list[RedisServer]]:
    base = tempfile.mkdtemp(prefix="shardproxy-test-")
    servers: list[RedisServer] = []
    try:
        for i in range(n):
            d = os.path.join(base, str(i))
            os.makedirs(d)
            servers.append(RedisServer(free_port(), d, extra=extra).start())
        yield servers
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(base, ignore_errors=True)
