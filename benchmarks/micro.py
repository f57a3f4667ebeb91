"""Micro-benchmarks of the pure hot-path functions, with timeit (no extra dependencies).

    python benchmarks/micro.py [--repeat N] [--filter TEXT]

An op is one call, made through functools.partial (which adds a few tens of ns). Each figure
is the best of --repeat timings of a loop timeit sizes to about 0.2 s, so background noise
inflates it less than a mean would; ns/item divides an op by what it handles (100 requests, 100
replies, 10 keys). Compare figures from one machine and one run only.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `proxy` importable from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.codec import request, resp
from proxy.commands import spec as commands
from proxy.config.schema import PoolConfig, ServerConfig
from proxy.routing import plan as routing
from proxy.routing.ring import HASH_NAMES, Ring
from proxy.routing.topology import build_pool

KEY = b"key:000000012345"  # redis-benchmark's key form
TAGGED_KEY = b"user:{000000012345}:profile"
VALUE = b"x" * 64
PIPELINE = 100
LABELS = ("r1", "r2", "r3")


@dataclass(frozen=True)
class Micro:
    name: str
    call: Callable[[], object]
    items: int = 1  # what one call handles, for ns/item


def _resp_cases() -> list[Micro]:
    gets = b"".join(resp.encode_request([b"GET", b"key:%012d" % i]) for i in range(PIPELINE))
    sets = b"".join(resp.encode_request([b"SET", b"key:%012d" % i, VALUE]) for i in range(PIPELINE))
    inline = b"PING\r\n" * PIPELINE
    bulk_replies = (b"$64\r\n" + VALUE + b"\r\n") * PIPELINE
    mixed = b"+OK\r\n:12345\r\n$-1\r\n$64\r\n" + VALUE + b"\r\n*2\r\n$1\r\na\r\n:1\r\n"
    mixed_replies = mixed * (PIPELINE // 5)
    reader, scanner = request.RequestReader(), resp.ReplyScanner()
    mget = [b"MGET", *(b"key:%012d" % i for i in range(10))]
    return [
        Micro("RequestReader.feed: 100 GET", partial(reader.feed, gets), PIPELINE),
        Micro("RequestReader.feed: 100 SET 64 B", partial(reader.feed, sets), PIPELINE),
        Micro("RequestReader.feed: 100 inline PING", partial(reader.feed, inline), PIPELINE),
        Micro("ReplyScanner.feed: 100 bulk 64 B", partial(scanner.feed, bulk_replies), PIPELINE),
        Micro(
            "ReplyScanner.feed: 100 mixed (+ : $-1 $ *)",
            partial(scanner.feed, mixed_replies),
            PIPELINE,
        ),
        Micro("encode_request: GET key", partial(resp.encode_request, [b"GET", KEY])),
        Micro("encode_request: SET key 64 B", partial(resp.encode_request, [b"SET", KEY, VALUE])),
        Micro("encode_request: MGET 10 keys", partial(resp.encode_request, mget)),
    ]


def _lookup_cases() -> list[Micro]:
    return [
        Micro("commands.lookup: GET", partial(commands.lookup, [b"GET", KEY])),
        Micro("commands.lookup: get", partial(commands.lookup, [b"get", KEY])),
        Micro("commands.lookup: Get (mixed case)", partial(commands.lookup, [b"Get", KEY])),
        Micro(
            "commands.lookup: CLIENT SETNAME",
            partial(commands.lookup, [b"CLIENT", b"SETNAME", b"x"]),
        ),
    ]


def _ring_cases() -> list[Micro]:
    out = []
    for hash_name in HASH_NAMES:
        plain = Ring(LABELS, (1, 1, 1), hash_name, "ketama", b"")
        tagged = Ring(LABELS, (1, 1, 1), hash_name, "ketama", b"{}")
        out += [
            Micro(f"Ring.node_for {hash_name}: no tag", partial(plain.node_for, KEY)),
            Micro(
                f"Ring.node_for {hash_name}: tag {{}}, key without one",
                partial(tagged.node_for, KEY),
            ),
            Micro(
                f"Ring.node_for {hash_name}: tag {{}}, tagged key",
                partial(tagged.node_for, TAGGED_KEY),
            ),
        ]
    return out


def _routing_cases() -> list[Micro]:
    servers = tuple(ServerConfig("127.0.0.1", 7001 + i, 1, name) for i, name in enumerate(LABELS))
    pool = build_pool(PoolConfig("bench", "fnv1a_64", "ketama", "{}", servers))
    spec = commands.lookup([b"MGET"])
    assert spec is not None
    mget = [b"MGET", *(b"key:%012d" % i for i in range(10))]
    return [
        Micro("routing.plan_multi: MGET 10 keys", partial(routing.plan_multi, spec, mget, pool), 10)
    ]


def all_cases() -> list[Micro]:
    return _resp_cases() + _lookup_cases() + _ring_cases() + _routing_cases()


def measure(micro: Micro, repeat: int) -> float:
    """Best ns per op (one call) over `repeat` timings of a loop sized to take about 0.2 s."""
    timer = timeit.Timer(micro.call)
    number, _ = timer.autorange()
    best = min(timer.repeat(repeat=repeat, number=number))
    return best / number * 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="micro-benchmarks of shardproxy's hot path")
    parser.add_argument("--repeat", type=int, default=5, help="timings per case (best is shown)")
    parser.add_argument("--filter", default="", help="only cases whose name contains this")
    args = parser.parse_args(argv)
    cases = [c for c in all_cases() if args.filter.lower() in c.name.lower()]
    width = max((len(c.name) for c in cases), default=10)
    print(f"{'case':<{width}}  {'ns/op':>10}  {'ns/item':>9}")
    for micro in cases:
        ns = measure(micro, max(1, args.repeat))
        per_item = f"{ns / micro.items:9.1f}" if micro.items > 1 else f"{'':>9}"
        print(f"{micro.name:<{width}}  {ns:10.1f}  {per_item}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
