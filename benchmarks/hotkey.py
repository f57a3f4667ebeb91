"""The hot-key scenario: a Zipf-distributed GET load through shardproxy with and without the
hot-key cache (and coalescing), in the same run: requests/s, proxy CPU per request, and the
hottest backend's load (commands/s and its share of all backend commands).

    python benchmarks/hotkey.py [--seconds S] [--rounds R] [--keys N] [--zipf S]

Two proxies (`off`: the defaults, hot-key sampling only; `on`: hotcache + coalesce) over the same
three redis-servers; rounds alternate which runs first. The client is one process with several
pipelined connections (pre-encoded batches, hiredis to count replies), so the proxy, a single
Python process, is the bottleneck. Figures go in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `proxy` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hiredis

from benchmarks.processes import (
    HOST,
    Proc,
    ProcessGroup,
    cpu_seconds,
    free_port,
    shardproxy_yaml,
    start_backends,
)

CACHE_ON = (
    "hotcache: {enabled: true, ttl_ms: 1000, max_bytes: 16777216, patterns: ['hk:*']}\n"
    "coalesce: {enabled: true}\n"
)
BATCH = 64  # GETs per pipelined write
CONNECTIONS = 8


def encode(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def start_proxy(
    group: ProcessGroup, conf_dir: Path, backends: list[Proc], name: str, extra: str
) -> Proc:
    port = free_port()
    conf = conf_dir / f"{name}.yaml"
    conf.write_text(shardproxy_yaml(port, free_port(), backends, "crc32a") + extra)
    proc = group.spawn(name, [sys.executable, "-m", "proxy", "serve", "-c", str(conf)], port)
    group.wait_ready(proc)
    return proc


def commands_processed(port: int) -> int:
    with socket.create_connection((HOST, port)) as sock:
        sock.sendall(encode(b"INFO", b"stats"))
        reader = hiredis.Reader()
        while (reply := reader.gets()) is False:
            reader.feed(sock.recv(65536))
    for line in reply.split(b"\r\n"):
        if line.startswith(b"total_commands_processed:"):
            return int(line.split(b":")[1])
    raise RuntimeError("no total_commands_processed in INFO")


def populate(port: int, keys: int) -> None:
    with socket.create_connection((HOST, port)) as sock:
        payload = b"".join(encode(b"SET", b"hk:%d" % i, b"v" * 64) for i in range(keys))
        sock.sendall(payload)
        reader, seen = hiredis.Reader(), 0
        while seen < keys:
            reader.feed(sock.recv(1 << 20))
            while reader.gets() is not False:
                seen += 1


def batches(keys: int, zipf: float, count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    weights = [1 / (rank + 1) ** zipf for rank in range(keys)]
    names = [b"hk:%d" % i for i in range(keys)]
    out = []
    for _ in range(count):
        out.append(b"".join(encode(b"GET", k) for k in rng.choices(names, weights, k=BATCH)))
    return out


def drive(port: int, payloads: list[bytes], seconds: float) -> int:
    """Replies received in `seconds` of pipelined GETs on CONNECTIONS sockets."""
    socks = [socket.create_connection((HOST, port)) for _ in range(CONNECTIONS)]
    readers = [hiredis.Reader() for _ in socks]
    done, i = 0, 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            for sock in socks:
                sock.sendall(payloads[i % len(payloads)])
                i += 1
            for sock, reader in zip(socks, readers, strict=True):
                got = 0
                while got < BATCH:
                    reader.feed(sock.recv(1 << 20))
                    while reader.gets() is not False:
                        got += 1
                done += got
    finally:
        for sock in socks:
            sock.close()
    return done


def measure(
    proxy: Proc, backends: list[Proc], payloads: list[bytes], seconds: float
) -> dict[str, float]:
    before = [commands_processed(b.port) for b in backends]
    cpu0 = cpu_seconds(proxy.pid) or 0.0
    start = time.monotonic()
    done = drive(proxy.port, payloads, seconds)
    elapsed = time.monotonic() - start
    cpu = (cpu_seconds(proxy.pid) or 0.0) - cpu0
    loads = [commands_processed(b.port) - n - 1 for b, n in zip(backends, before, strict=True)]
    return {
        "rps": done / elapsed,
        "cpu_us": cpu / done * 1e6,
        "hottest_rps": max(loads) / elapsed,
        "hottest_share": max(loads) / max(1, sum(loads)),
        "backend_per_req": sum(loads) / done,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--zipf", type=float, default=1.1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hotkey-") as tmp:
        group = ProcessGroup(Path(tmp))
        try:
            backends = start_backends(group, Path(tmp) / "data")
            proxies = {
                "off": start_proxy(group, Path(tmp), backends, "off", ""),
                "on": start_proxy(group, Path(tmp), backends, "on", CACHE_ON),
            }
            populate(proxies["off"].port, args.keys)
            payloads = batches(args.keys, args.zipf, 256, seed=1)
            results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
            for r in range(args.rounds):
                for name in ("off", "on") if r % 2 == 0 else ("on", "off"):
                    drive(proxies[name].port, payloads, 1.0)  # warm: hot set, cache
                    results[name].append(measure(proxies[name], backends, payloads, args.seconds))
        finally:
            group.stop()
    report(results, args)
    return 0


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    def best(name: str, field: str, low: bool = False) -> float:
        values = [row[field] for row in results[name]]
        return min(values) if low else max(values)

    print(f"Zipf s={args.zipf} over {args.keys} keys, GET 64 B, {CONNECTIONS} connections x "
          f"{BATCH} pipelined; best of {args.rounds} rounds of {args.seconds:.0f} s")  # fmt: skip
    print(f"{'cache':<6} {'req/s':>9} {'proxy CPU µs/req':>17} {'hottest backend cmd/s':>22} "
          f"{'hottest share':>14} {'backend cmds/req':>17}")  # fmt: skip
    for name in ("off", "on"):
        print(
            f"{name:<6} {best(name, 'rps'):>9.0f} {best(name, 'cpu_us', True):>17.2f} "
            f"{best(name, 'hottest_rps', True):>22.0f} {best(name, 'hottest_share', True):>14.3f} "
            f"{best(name, 'backend_per_req', True):>17.3f}"
        )
    print(
        f"ratios on/off: req/s x{best('on', 'rps') / best('off', 'rps'):.2f}, "
        f"hottest backend load per request x"
        f"{(best('on', 'hottest_rps', True) / best('on', 'rps')) / (best('off', 'hottest_rps', True) / best('off', 'rps')):.2f}"  # noqa: E501
    )


if __name__ == "__main__":
    raise SystemExit(main())
