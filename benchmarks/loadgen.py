"""Load for the benchmark: redis-benchmark runs with their output parsed, bulk SETs that populate
the keyspaces first, and plain sockets held open as idle clients.

redis-benchmark 7.x prints one CSV row per test (requests/s, then avg/min/p50/p95/p99/max latency
in ms). Since 7.0 it stops at the first error reply or dropped connection (printing it to stderr and
exiting non-zero), so a run either completes cleanly or leaves no figure and its error is kept.
"""

from __future__ import annotations

import csv
import resource
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import hiredis

from benchmarks.processes import HOST

REDIS_BENCHMARK = shutil.which("redis-benchmark") or "/usr/bin/redis-benchmark"
SAMPLE_INTERVAL_S = 0.1
# stderr lines that say nothing about the target's health: redis-benchmark asks for CONFIG GET
# save/appendonly, which proxies refuse.
_BENIGN = ("WARNING: Could not fetch server CONFIG",)
_LATENCY_COLUMNS = ("avg", "min", "p50", "p95", "p99", "max")


@dataclass(frozen=True)
class BenchRow:
    test: str  # "GET", "SET", or the custom command line
    rps: float  # requests per second
    latency_ms: dict[str, float]  # avg min p50 p95 p99 max, when redis-benchmark reports them


@dataclass
class BenchOutput:
    command: list[str]
    rows: dict[str, BenchRow] = field(default_factory=dict)  # by test name
    errors: list[str] = field(default_factory=list)  # server errors and anything unexpected
    returncode: int | None = None  # None: killed at its timeout
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.errors and bool(self.rows)


def benchmark_args(
    port: int,
    *,
    clients: int,
    requests: int,
    pipeline: int,
    data_bytes: int,
    keyspace: int,
    tests: Sequence[str] = (),
    command: Sequence[str] = (),
) -> list[str]:
    args = [REDIS_BENCHMARK, "-h", HOST, "-p", str(port), "-c", str(clients)]
    args += ["-n", str(requests), "-P", str(pipeline), "-d", str(data_bytes)]
    args += ["-r", str(keyspace), "--csv"]
    if tests:
        args += ["-t", ",".join(t.lower() for t in tests)]
    return args + list(command)


def run_benchmark(
    args: list[str], timeout_s: float, sample: Callable[[], None] | None = None
) -> BenchOutput:
    """Run redis-benchmark; call `sample` every SAMPLE_INTERVAL_S while it runs."""
    out = BenchOutput(command=args)
    started = time.monotonic()
    deadline = started + timeout_s
    popen = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        while True:
            if sample is not None:
                sample()
            try:
                stdout, stderr = popen.communicate(timeout=SAMPLE_INTERVAL_S)
                out.returncode = popen.returncode
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    popen.kill()
                    stdout, stderr = popen.communicate()
                    out.errors.append(f"redis-benchmark killed after {timeout_s:.0f} s")
                    break
    finally:
        if popen.poll() is None:  # interrupted: do not leave it running
            popen.kill()
            popen.wait()
    out.wall_s = time.monotonic() - started
    _parse(out, stdout.decode(errors="replace"), stderr.decode(errors="replace"))
    if out.returncode not in (0, None):
        out.errors.append(f"redis-benchmark exited with status {out.returncode}")
    return out


def _parse(out: BenchOutput, stdout: str, stderr: str) -> None:
    csv_lines = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith('"'):
            csv_lines.append(line)
        elif line:
            out.errors.append(line)
    for line in stderr.splitlines():
        line = line.strip()
        if line and not line.startswith(_BENIGN):
            out.errors.append(line)
    for record in csv.DictReader(csv_lines):
        test = record.get("test")
        rps = record.get("rps")
        if not test or not rps:
            continue
        latency = {}
        for name in _LATENCY_COLUMNS:
            value = record.get(f"{name}_latency_ms")
            if value:
                latency[name] = float(value)
        out.rows[test] = BenchRow(test, float(rps), latency)


def encode(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def _read_replies(sock: socket.socket, count: int) -> list[object]:
    reader = hiredis.Reader()
    replies: list[object] = []
    while len(replies) < count:
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError(f"connection closed after {len(replies)} of {count} replies")
        reader.feed(data)
        reply = reader.gets()
        while reply is not False:
            replies.append(reply)
            reply = reader.gets()
    return replies


def set_keys(port: int, keys: Sequence[bytes], value: bytes, batch: int = 500) -> None:
    """SET every key to `value` through one pipelining connection; raise on any non-OK reply."""
    with socket.create_connection((HOST, port), timeout=30) as sock:
        for start in range(0, len(keys), batch):
            chunk = keys[start : start + batch]
            sock.sendall(b"".join(encode(b"SET", key, value) for key in chunk))
            for key, reply in zip(chunk, _read_replies(sock, len(chunk)), strict=True):
                if reply != b"OK":
                    raise RuntimeError(f"SET {key!r} on port {port} answered {reply!r}")


def get_keys(port: int, keys: Sequence[bytes]) -> list[object]:
    with socket.create_connection((HOST, port), timeout=30) as sock:
        sock.sendall(b"".join(encode(b"GET", key) for key in keys))
        return _read_replies(sock, len(keys))


def raise_nofile(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE to at least `needed` (up to the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def open_idle_clients(port: int, count: int) -> list[socket.socket]:
    """`count` connections that each did one PING (so the target set them up), then stay idle."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection((HOST, port), timeout=10))
        ping = encode(b"PING")
        for sock in socks:
            sock.sendall(ping)
        for i, sock in enumerate(socks):
            reply = _read_replies(sock, 1)[0]
            if reply != b"PONG":
                raise RuntimeError(f"idle client {i}: PING answered {reply!r}")
    except BaseException:
        close_all(socks)
        raise
    return socks


def close_all(socks: Sequence[socket.socket]) -> None:
    for sock in socks:
        sock.close()
