"""Huge multi-key requests and a bystander: does one MGET of 1M keys stall other clients?

Starts 3 redis-servers and shardproxy (`serve -c`, one process). One client sends, in turn,
MSET of `--keys / 2` pairs, MGET of `--keys` keys and DEL of `--keys` keys through the proxy,
while a bystander PINGs the proxy every 5 ms; then the same three requests straight to one
redis-server. Prints each request's time and the bystander's PING p99/max during it.

    .venv/bin/python benchmarks/bigmulti.py [--keys 1000000] [--extra 'YAML lines']
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hiredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.abuse import PingerProcess, _open  # noqa: E402
from tests.support.processes import free_port, redis_servers, wait_until  # noqa: E402


def encode(args: list[bytes]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    parts += [b"$%d\r\n%s\r\n" % (len(a), a) for a in args]
    return b"".join(parts)


def timed(port: int, args: list[bytes]) -> tuple[float, int]:
    """Send one request, read its whole reply: (seconds, reply bytes)."""
    payload = encode(args)
    reader = hiredis.Reader()
    size = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        start = time.perf_counter()
        sock.sendall(payload)
        while True:
            data = sock.recv(1 << 20)
            if not data:
                raise ConnectionError("closed")
            size += len(data)
            reader.feed(data)
            if reader.gets() is not False:
                return time.perf_counter() - start, size


def requests(n: int) -> list[tuple[str, list[bytes]]]:
    keys = [b"key:%d" % i for i in range(n)]
    mset: list[bytes] = [b"MSET"]
    for k in keys[: n // 2]:
        mset += [k, b"value:" + k[4:]]
    return [
        (f"MSET {n // 2} pairs", mset),
        (f"MGET {n} keys", [b"MGET", *keys]),
        (f"DEL {n} keys", [b"DEL", *keys]),
    ]


def run(n: int, extra: str) -> None:
    with redis_servers(3) as servers, tempfile.TemporaryDirectory() as tmp:
        port, admin = free_port(), free_port()
        cfg = Path(tmp) / "proxy.yaml"
        cfg.write_text(
            f"listen: 127.0.0.1:{port}\nadmin: 127.0.0.1:{admin}\n{extra}"
            "pools:\n  main:\n    servers:\n"
            + "".join(f"      - {s.addr}:1 s{i}\n" for i, s in enumerate(servers))
        )
        proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/shardproxy"), "serve", "-c", str(cfg)],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: _open(port), 10, "proxy up")
            for name, args in requests(n):
                pinger = PingerProcess(port, None)
                pinger.start()
                time.sleep(0.2)
                seconds, size = timed(port, args)
                pinger.stop_and_join()
                print(
                    f"proxy  {name}: {seconds:.2f} s, reply {size} bytes; bystander "
                    f"{pinger.summary()}, {len(pinger.samples)} PINGs"
                )
            direct = int(servers[0].addr.rsplit(":", 1)[1])
            for name, args in requests(n):
                seconds, size = timed(direct, args)
                print(f"direct {name}: {seconds:.2f} s, reply {size} bytes")
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--extra", default="", help="YAML lines added to the proxy config")
    args = ap.parse_args()
    run(args.keys, args.extra)


if __name__ == "__main__":
    main()
