"""Differential: the proxy over 3 backends must answer like one plain redis-server.

A seeded random stream of commands (every data type, expirations, split-and-merge commands,
hash-tagged same-backend commands, scripts and errors) is sent to the proxy and to a reference
redis-server, one by one and pipelined, over RESP2 and RESP3; replies are compared byte for byte.

Intended differences, kept out of the stream on purpose:
- multi-key same-backend commands on keys without a common hash tag (the proxy answers CROSSSLOT;
  the stream only draws such commands from one tag group, so both sides must agree);
- replies that depend on randomness or on the moment a command runs (SPOP, SRANDMEMBER, XADD *,
  RANDOMKEY...), and SCAN cursors (the proxy encodes the backend in the cursor);
- unordered replies (SMEMBERS, SINTER, HGETALL, KEYS...) are compared as sorted collections, and
  TTL-like replies within a tolerance of `TTL_TOLERANCE_S`;
- HELLO's `id` field, and SELECT of a database other than 0 (the proxy serves db 0 only).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tests.support.processes import RedisServer
from tests.support.runner import DEFENDED, ProxyThread, proxy_for
from tests.support.wire import Agg, Err, RespConn, parse, stream

N_COMMANDS = 3000
TTL_TOLERANCE_S = 2

# Keys are drawn mostly from their command's type (so most commands do real work) and sometimes
# from every type (so WRONGTYPE errors, RENAME over other types... happen too).
TYPES = [b"str", b"list", b"hash", b"set", b"zset", b"stream", b"hll"]
ODD_KEYS = [b"", b"bin:\x00\xff\r\n key", b"k"]
GROUPS = [b"{g0}", b"{g1}", b"{user:7}"]
SUFFIXES = [b":a", b":b", b":c", b":d"]
PLAIN_KEYS = {t: [b"%s%d" % (t, i) for i in range(4)] for t in TYPES}
TAGGED_KEYS = {t: [g + b":" + t + s for g in GROUPS for s in SUFFIXES] for t in TYPES}
ALL_KEYS = ODD_KEYS + [k for t in TYPES for k in PLAIN_KEYS[t] + TAGGED_KEYS[t]]
OTHER_TYPE_P = 0.04  # how often a command draws a key of any type

FUTURE_S = 4102444800  # 2100-01-01: an EXPIREAT that never fires during a test
PLACES = [(b"13.361389", b"38.115556"), (b"15.087269", b"37.502669"), (b"2.35", b"48.85")]

SCRIPTS = {
    "get": (b"return redis.call('GET', KEYS[1])", 1),
    "set_incr": (b"redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])", 2),
    "shapes": (b"return {KEYS[1], ARGV[1], 3, 2.5, false, {1, 'x'}, redis.status_reply('ok')}", 1),
    "mget": (b"return redis.call('MGET', KEYS[1], KEYS[2], KEYS[3])", 3),
    "lpush": (b"return redis.call('LPUSH', KEYS[1], ARGV[1])", 1),
    "const": (b"return 42", 0),
    "argv": (b"return ARGV[1]", 0),
    "custom_error": (b"return redis.error_reply('MYERR custom')", 0),
}
LOADED = ["get", "lpush"]  # SCRIPT LOADed (fan-out) at the start, so EVALSHA works everywhere

# Replies compared as multisets: their order depends on a per-process hash seed.
UNORDERED = {b"smembers", b"sinter", b"sunion", b"sdiff", b"hgetall", b"hkeys", b"hvals", b"keys"}
# Replies compared within a tolerance: they depend on the moment the command ran.
TTL_LIKE = {b"ttl": 1, b"pttl": 1000, b"expiretime": 1, b"pexpiretime": 1000}

Args = list[bytes]
Gen = Callable[[random.Random], Args]


# -- the generator -------------------------------------------------------------------------------
def _b(x: object) -> bytes:
    return x if isinstance(x, bytes) else str(x).encode()


def key(rng: random.Random, kind: bytes = b"") -> bytes:
    if not kind or rng.random() < OTHER_TYPE_P:
        return rng.choice(ALL_KEYS)
    return rng.choice(PLAIN_KEYS[kind] + TAGGED_KEYS[kind])


def group(rng: random.Random, n: int, kind: bytes = b"") -> list[bytes]:
    """`n` keys (repeats allowed) sharing one hash tag: one backend on the proxy."""
    tag = rng.choice(GROUPS)
    out = []
    for _ in range(n):
        t = rng.choice(TYPES) if not kind or rng.random() < OTHER_TYPE_P else kind
        out.append(tag + b":" + t + rng.choice(SUFFIXES))
    return out


def keys(rng: random.Random, lo: int = 1, hi: int = 6, kind: bytes = b"") -> list[bytes]:
    return [key(rng, kind) for _ in range(rng.randint(lo, hi))]


def value(rng: random.Random) -> bytes:
    return _b(
        rng.choice(
            [rng.randint(-5, 50), "abc", "hello world", "1.5", "3e2", "x" * 100, "", "\x00\xfe"]
        )
    )


def member(rng: random.Random) -> bytes:
    return rng.choice([b"m0", b"m1", b"m2", b"m3", b"m4", b"1", b"2", b"-3"])


def field(rng: random.Random) -> bytes:
    return b"f%d" % rng.randint(0, 5)


def score(rng: random.Random) -> bytes:
    return rng.choice([b"1", b"2.5", b"-1", b"0", b"inf", b"-inf", b"1e3", b"7", b"nan"])


def num(rng: random.Random, lo: int = -3, hi: int = 10) -> bytes:
    return b"%d" % rng.randint(lo, hi)


def stream_id(rng: random.Random) -> bytes:
    ms = rng.randint(0, 40)
    return rng.choice([b"%d-%d" % (ms, rng.randint(0, 3)), b"%d-*" % ms, b"%d" % ms])


def _strings(rng: random.Random) -> Args:
    k = key(rng, b"str")
    c = rng.randrange(22)
    if c == 0:
        opts: list[bytes] = []
        opts += rng.choice([[], [b"EX", b"100"], [b"PX", b"500000"], [b"KEEPTTL"], [b"EX", b"0"]])
        opts += rng.choice([[], [b"NX"], [b"XX"]])
        opts += rng.choice([[], [b"GET"]])
        return [b"SET", k, value(rng), *opts]
    return [
        [b"GET", k],
        [b"GETSET", k, value(rng)],
        [b"GETDEL", k],
        [b"GETEX", k, *rng.choice([[], [b"EX", b"300"], [b"PERSIST"], [b"PXAT", b"1"]])],
        [b"SETNX", k, value(rng)],
        [b"SETEX", k, rng.choice([b"100", b"0", b"x"]), value(rng)],
        [b"PSETEX", k, b"900000", value(rng)],
        [b"APPEND", k, value(rng)],
        [b"STRLEN", k],
        [b"GETRANGE", k, num(rng), num(rng)],
        [b"SETRANGE", k, num(rng, 0, 20), value(rng)],
        [b"INCR", k],
        [b"DECR", k],
        [b"INCRBY", k, num(rng, -100, 100)],
        [b"DECRBY", k, num(rng)],
        [b"INCRBYFLOAT", k, rng.choice([b"0.1", b"-2.5", b"1e2", b"3"])],
        [b"SETBIT", k, num(rng, 0, 63), rng.choice([b"0", b"1"])],
        [b"GETBIT", k, num(rng, 0, 70)],
        [b"BITCOUNT", k, *rng.choice([[], [num(rng), num(rng)]])],
        [b"BITPOS", k, rng.choice([b"0", b"1"])],
        [b"BITFIELD", k, b"INCRBY", b"u8", b"0", num(rng), b"GET", b"u4", b"4"],
    ][c - 1]


def _lists(rng: random.Random) -> Args:
    k = key(rng, b"list")
    return rng.choice(
        [
            [b"LPUSH", k, value(rng), value(rng)],
            [b"RPUSH", k, value(rng)],
            [b"LPUSHX", k, value(rng)],
            [b"RPUSHX", k, value(rng)],
            [b"LPOP", k, *rng.choice([[], [num(rng, 0, 3)]])],
            [b"RPOP", k, *rng.choice([[], [num(rng, 0, 3)]])],
            [b"LRANGE", k, num(rng), num(rng)],
            [b"LLEN", k],
            [b"LINDEX", k, num(rng)],
            [b"LSET", k, num(rng, -2, 3), value(rng)],
            [b"LREM", k, num(rng, -2, 2), value(rng)],
            [b"LTRIM", k, num(rng, 0, 3), num(rng, -1, 8)],
            [b"LINSERT", k, rng.choice([b"BEFORE", b"AFTER"]), value(rng), value(rng)],
            [b"LPOS", k, value(rng), *rng.choice([[], [b"RANK", b"-1"], [b"COUNT", b"0"]])],
        ]
    )


def _hashes(rng: random.Random) -> Args:
    k = key(rng, b"hash")
    return rng.choice(
        [
            [b"HSET", k, field(rng), value(rng), field(rng), value(rng)],
            [b"HGET", k, field(rng)],
            [b"HMGET", k, field(rng), field(rng)],
            [b"HDEL", k, field(rng)],
            [b"HINCRBY", k, field(rng), num(rng)],
            [b"HINCRBYFLOAT", k, field(rng), b"1.25"],
            [b"HGETALL", k],
            [b"HKEYS", k],
            [b"HVALS", k],
            [b"HLEN", k],
            [b"HEXISTS", k, field(rng)],
            [b"HSETNX", k, field(rng), value(rng)],
            [b"HSTRLEN", k, field(rng)],
        ]
    )


def _sets(rng: random.Random) -> Args:
    k = key(rng, b"set")
    return rng.choice(
        [
            [b"SADD", k, member(rng), member(rng), member(rng)],
            [b"SREM", k, member(rng)],
            [b"SMEMBERS", k],
            [b"SISMEMBER", k, member(rng)],
            [b"SMISMEMBER", k, member(rng), member(rng)],
            [b"SCARD", k],
        ]
    )


def _zsets(rng: random.Random) -> Args:
    k = key(rng, b"zset")
    flags = rng.choice([[], [b"NX"], [b"XX"], [b"GT"], [b"CH"], [b"INCR"], [b"NX", b"XX"]])
    lon, lat = rng.choice(PLACES)
    return rng.choice(
        [
            [b"ZADD", k, *flags, score(rng), member(rng)],
            [b"ZADD", k, score(rng), member(rng), score(rng), member(rng)],
            [b"ZREM", k, member(rng)],
            [b"ZSCORE", k, member(rng)],
            [b"ZMSCORE", k, member(rng), member(rng)],
            [b"ZINCRBY", k, score(rng), member(rng)],
            [b"ZRANGE", k, num(rng), num(rng), *rng.choice([[], [b"WITHSCORES"], [b"REV"]])],
            [b"ZRANGE", k, b"-inf", b"(5", b"BYSCORE", b"LIMIT", b"0", b"3"],
            [b"ZREVRANGE", k, b"0", b"-1", b"WITHSCORES"],
            [b"ZRANK", k, member(rng)],
            [b"ZREVRANK", k, member(rng)],
            [b"ZCARD", k],
            [b"ZCOUNT", k, b"-1", b"+inf"],
            [b"ZPOPMIN", k, *rng.choice([[], [num(rng, 0, 3)]])],
            [b"ZPOPMAX", k],
            [b"ZRANGEBYLEX", k, b"-", b"[m2"],
            [b"ZREMRANGEBYRANK", k, b"0", b"0"],
            [b"GEOADD", k, lon, lat, member(rng)],
            [b"GEODIST", k, member(rng), member(rng), b"km"],
            [b"GEOPOS", k, member(rng)],
            [b"GEOHASH", k, member(rng)],
        ]
    )


def _streams(rng: random.Random) -> Args:
    k = key(rng, b"stream")
    h = key(rng, b"hll")
    return rng.choice(
        [
            [b"XADD", k, stream_id(rng), field(rng), value(rng)],
            [b"XADD", k, b"MAXLEN", b"3", stream_id(rng), b"f", b"v"],
            [b"XLEN", k],
            [b"XRANGE", k, b"-", b"+"],
            [b"XREVRANGE", k, b"+", b"-", b"COUNT", b"2"],
            [b"XDEL", k, stream_id(rng).replace(b"*", b"0")],
            [b"XTRIM", k, b"MAXLEN", num(rng, 0, 4)],
            [b"PFADD", h, member(rng), member(rng)],
            [b"PFCOUNT", h],
        ]
    )


def _generic(rng: random.Random) -> Args:
    k = key(rng)
    cond = rng.choice([[], [], [b"NX"], [b"XX"], [b"GT"], [b"LT"]])
    return rng.choice(
        [
            [b"TYPE", k],
            [b"EXPIRE", k, rng.choice([b"100", b"1000", b"0", b"-1"]), *cond],
            [b"PEXPIRE", k, b"700000", *cond],
            [b"EXPIREAT", k, rng.choice([b"%d" % FUTURE_S, b"1000"])],
            [b"PEXPIREAT", k, rng.choice([b"%d" % (FUTURE_S * 1000), b"1"])],
            [b"PERSIST", k],
            [b"TTL", k],
            [b"PTTL", k],
            [b"EXPIRETIME", k],
            [b"PEXPIRETIME", k],
            [b"OBJECT", b"ENCODING", k],
            [b"STRLEN", k],
            [b"SORT", k, *rng.choice([[], [b"ALPHA"], [b"DESC", b"LIMIT", b"0", b"2"]])],
            [b"DBSIZE"],
            [b"KEYS", rng.choice([b"*", b"{g0}*", b"k?"])],
            [b"PING"],
            [b"ECHO", value(rng)],
        ]
    )


def _multi(rng: random.Random) -> Args:
    c = rng.randrange(6)
    if c == 0:
        return [b"MSET", *(x for k in keys(rng, kind=b"str") for x in (k, value(rng)))]
    return [[b"MGET"], [b"DEL"], [b"EXISTS"], [b"TOUCH"], [b"UNLINK"]][c - 1] + keys(rng)


def _same_backend(rng: random.Random) -> Args:
    kind, make = rng.choice(SAME_BACKEND)
    a, b, c, d = group(rng, 4, kind or rng.choice(TYPES))
    return make(rng, a, b, c, d)


def _side(rng: random.Random) -> bytes:
    return rng.choice([b"LEFT", b"RIGHT"])


Four = Callable[[random.Random, bytes, bytes, bytes, bytes], Args]
SAME_BACKEND: list[tuple[bytes, Four]] = [
    (b"", lambda r, a, b, c, d: [b"RENAME", a, b]),
    (b"", lambda r, a, b, c, d: [b"RENAMENX", a, b]),
    (b"", lambda r, a, b, c, d: [b"COPY", a, b, *r.choice([[], [b"REPLACE"]])]),
    (b"set", lambda r, a, b, c, d: [b"SMOVE", a, b, member(r)]),
    (b"list", lambda r, a, b, c, d: [b"LMOVE", a, b, _side(r), _side(r)]),
    (b"list", lambda r, a, b, c, d: [b"RPOPLPUSH", a, b]),
    (b"list", lambda r, a, b, c, d: [b"LMPOP", b"2", a, b, _side(r), b"COUNT", b"2"]),
    (b"set", lambda r, a, b, c, d: [b"SINTERSTORE", d, a, b]),
    (b"set", lambda r, a, b, c, d: [b"SUNIONSTORE", d, a, b, c]),
    (b"set", lambda r, a, b, c, d: [b"SDIFFSTORE", d, a, b]),
    (b"set", lambda r, a, b, c, d: [b"SINTER", a, b]),
    (b"set", lambda r, a, b, c, d: [b"SUNION", a, b]),
    (b"set", lambda r, a, b, c, d: [b"SDIFF", a, b]),
    (b"set", lambda r, a, b, c, d: [b"SINTERCARD", b"2", a, b, b"LIMIT", b"1"]),
    (b"zset", lambda r, a, b, c, d: [b"ZUNIONSTORE", d, b"2", a, b, b"WEIGHTS", b"1", b"2"]),
    (b"zset", lambda r, a, b, c, d: [b"ZINTERSTORE", d, b"2", a, b, b"AGGREGATE", b"MAX"]),
    (b"zset", lambda r, a, b, c, d: [b"ZUNION", b"3", a, b, c, b"WITHSCORES"]),
    (b"zset", lambda r, a, b, c, d: [b"ZDIFF", b"2", a, b]),
    (b"zset", lambda r, a, b, c, d: [b"ZRANGESTORE", d, a, b"0", b"-1"]),
    (b"zset", lambda r, a, b, c, d: [b"ZMPOP", b"2", a, b, b"MIN"]),
    (b"str", lambda r, a, b, c, d: [b"BITOP", r.choice([b"AND", b"OR", b"XOR"]), d, a, b]),
    (b"str", lambda r, a, b, c, d: [b"BITOP", b"NOT", d, a]),
    (b"str", lambda r, a, b, c, d: [b"MSETNX", a, value(r), b, value(r)]),
    (b"str", lambda r, a, b, c, d: [b"LCS", a, b]),
    (b"str", lambda r, a, b, c, d: [b"MSET", a, value(r), b, value(r)]),
    (b"str", lambda r, a, b, c, d: [b"MGET", a, b, c]),
    (b"hll", lambda r, a, b, c, d: [b"PFMERGE", d, a, b]),
    (b"hll", lambda r, a, b, c, d: [b"PFCOUNT", a, b]),
]


def _scripts(rng: random.Random) -> Args:
    name = rng.choice(list(SCRIPTS))
    body, nkeys = SCRIPTS[name]
    ks = group(rng, nkeys, b"list" if name == "lpush" else b"str")
    c = rng.randrange(10)
    if c == 0 and name in LOADED:
        return [b"EVALSHA", _sha(body), b"%d" % nkeys, *ks, value(rng)]
    if c == 1:
        return [b"EVALSHA", b"0" * 40, b"0"]
    if c == 2 and name == "get":
        return [b"EVAL_RO", body, b"1", *ks]
    if c == 3:
        return [b"EVAL", body, rng.choice([b"-1", b"abc", b"9"]), *ks]
    return [b"EVAL", body, b"%d" % nkeys, *ks, value(rng)]


BAD: list[Args] = [
    [b"GET"],
    [b"SET", b"k1"],
    [b"HSET", b"k1", b"f"],
    [b"MSET", b"k1"],
    [b"MSET", b"k1", b"v", b"k2"],
    [b"MGET"],
    [b"DEL"],
    [b"EXISTS"],
    [b"TOUCH"],
    [b"UNLINK"],
    [b"LPUSH", b"k1"],
    [b"ZADD", b"k1", b"1"],
    [b"RENAME", b"{g0}:a"],
    [b"EVAL"],
    [b"PFMERGE"],
    [b"BITOP", b"AND"],
    [b"FOOBAR"],
    [b"FOOBAR", b"x", b"y"],
    [b"GETT", b"k1"],
    [b"OBJECT"],
    [b"OBJECT", b"FOO", b"k1"],
    [b"OBJECT", b"ENCODING"],
    [b"XINFO", b"NOPE"],
    [b"SET", b"k1", b"v", b"NX", b"XX"],
    [b"SET", b"k1", b"v", b"EX", b"abc"],
    [b"SET", b"k1", b"v", b"EX", b"-5"],
    [b"INCRBY", b"k1", b"x"],
    [b"ZADD", b"k1", b"x", b"m"],
    [b"EXPIRE", b"k1", b"x"],
    [b"GETRANGE", b"k1", b"a", b"1"],
    [b"LRANGE", b"k1", b"0", b"x"],
    [b"SETBIT", b"k1", b"-1", b"1"],
    [b"ZRANGE", b"k1", b"0", b"1", b"FOO"],
    [b"BITOP", b"FOO", b"{g0}:d", b"{g0}:a"],
    [b"SINTERCARD", b"0", b"{g0}:a"],
    [b"ZUNIONSTORE", b"{g0}:d", b"0", b"{g0}:a"],
    [b"ZUNIONSTORE", b"{g0}:d", b"5", b"{g0}:a"],
    [b"ZUNIONSTORE", b"{g0}:d", b"x", b"{g0}:a"],
    [b"LMPOP", b"0", b"{g1}:a", b"LEFT"],
    [b"XADD", b"k1", b"0-0", b"f", b"v"],
    [b"PFADD"],
    [b"ECHO"],
    [b"ECHO", b"a", b"b"],
    [b"CLIENT", b"FOO"],
    [b"CLIENT", b"SETNAME", b"a b"],
    [b"LPOS", b"k1", b"x", b"RANK", b"0"],
    [b"OBJECT", b"FREQ", b"k1"],
    [b"SELECT", b"0"],
    [b"SELECT", b"x"],
]


def _more(rng: random.Random) -> Args:
    k = key(rng, b"stream")
    sid = stream_id(rng).replace(b"*", b"0")
    kind = rng.choice(TYPES)
    a, b, c = group(rng, 3, kind)
    one = key(rng, kind)
    make = rng.choice(
        [
            lambda: [b"CLIENT", b"SETNAME", rng.choice([b"app", b"x1"])],
            lambda: [b"CLIENT", b"GETNAME"],
            lambda: [b"XGROUP", b"CREATE", k, b"grp", b"0", b"MKSTREAM"],
            lambda: [b"XPENDING", k, b"grp"],
            lambda: [b"XACK", k, b"grp", sid],
            lambda: [b"XINFO", b"STREAM", k],
            lambda: [b"XINFO", b"GROUPS", k],
            lambda: [b"XREADGROUP", b"GROUP", b"grp", b"c1", b"COUNT", b"2", b"STREAMS", a, b">"],
            lambda: [b"XREAD", b"COUNT", b"2", b"STREAMS", a, b, b"0", b"0"],
            lambda: [b"SORT", a, b"BY", b"nosort", b"STORE", b],
            lambda: [b"SORT_RO", one, b"ALPHA", b"LIMIT", b"1", b"2"],
            lambda: [
                b"GEOSEARCHSTORE",
                a,
                b,
                b"FROMLONLAT",
                b"15",
                b"37",
                b"BYRADIUS",
                b"500",
                b"km",
            ],
            lambda: [b"GEOSEARCH", one, b"FROMLONLAT", b"15", b"37", b"BYRADIUS", b"300", b"km"],
            lambda: [b"BITFIELD_RO", one, b"GET", b"u8", b"0"],
            lambda: [b"HRANDFIELD", one, b"0"],
            lambda: [b"SETRANGE", one, b"0", b""],
            lambda: [b"SET", one, b"v", b"GET", b"PX", b"600000"],
            lambda: [b"SUNIONSTORE", c, a, b],
            lambda: [b"ZINTER", b"2", a, b, b"WITHSCORES"],
            lambda: [b"ZDIFFSTORE", c, b"2", a, b],
            lambda: [b"COMMAND", b"COUNT"],
            lambda: [b"COMMAND", b"GETKEYS", b"MSET", a, b"1", b, b"2"],
            lambda: [b"EXISTS", *(key(rng) for _ in range(40))],
            lambda: [b"MGET", *(key(rng, b"str") for _ in range(100))],
            lambda: [b"DEL", *group(rng, 5), *keys(rng, 0, 4)],
            lambda: [b"MSET", *(x for k2 in keys(rng, 10, 30, b"str") for x in (k2, value(rng)))],
        ]
    )
    return make()


def _errors(rng: random.Random) -> Args:
    return list(rng.choice(BAD))


GENERATORS: list[tuple[Gen, int]] = [
    (_strings, 16),
    (_lists, 9),
    (_hashes, 8),
    (_sets, 7),
    (_zsets, 9),
    (_streams, 6),
    (_generic, 12),
    (_multi, 10),
    (_same_backend, 12),
    (_scripts, 5),
    (_errors, 6),
    (_more, 8),
]


def command_stream(seed: int, n: int = N_COMMANDS) -> list[Args]:
    rng = random.Random(seed)
    gens = [g for g, _ in GENERATORS]
    weights = [w for _, w in GENERATORS]
    out: list[Args] = [[b"SCRIPT", b"LOAD", SCRIPTS[name][0]] for name in LOADED]
    for _ in range(n):
        args = rng.choices(gens, weights)[0](rng)
        style = rng.randrange(3)  # command names in any case
        args[0] = args[0].lower() if style == 0 else args[0].title() if style == 1 else args[0]
        out.append(args)
    return out


def _sha(body: bytes) -> bytes:
    import hashlib

    return hashlib.sha1(body).hexdigest().encode()


# -- comparison ----------------------------------------------------------------------------------
def _canonical(value: object) -> Any:
    """A sortable form of a decoded reply, with aggregates flattened to sorted tuples."""
    if isinstance(value, Agg):
        items = value.items
        if value.kind == "%":
            pairs = [(repr(_canonical(k)), repr(_canonical(v))) for k, v in _pairs(items)]
            return ("map", tuple(sorted(pairs)))
        return ("agg", tuple(sorted(repr(_canonical(i)) for i in items)))
    if isinstance(value, list):
        return ("agg", tuple(sorted(repr(_canonical(i)) for i in value)))
    return value


def _pairs(items: tuple[object, ...]) -> list[tuple[object, object]]:
    return [(items[i], items[i + 1]) for i in range(0, len(items), 2)]


def _flat_pairs(value: object) -> object:
    """HGETALL in RESP2 is a flat array: compare it as a map."""
    if isinstance(value, list) and len(value) % 2 == 0:
        return Agg("%", tuple(value))
    return value


def same_reply(args: Args, ref: bytes, got: bytes) -> bool:
    if ref == got:
        return True
    name = args[0].lower()
    ref_v, _ = parse(ref)
    got_v, _ = parse(got)
    if name in UNORDERED:
        if name == b"hgetall":
            ref_v, got_v = _flat_pairs(ref_v), _flat_pairs(got_v)
        return bool(_canonical(ref_v) == _canonical(got_v))
    if name in TTL_LIKE and isinstance(ref_v, int) and isinstance(got_v, int):
        if ref_v < 0 or got_v < 0:
            return False
        return abs(ref_v - got_v) <= TTL_LIKE[name] * TTL_TOLERANCE_S
    return False


def describe(commands: list[Args], i: int, ref: bytes, got: bytes) -> str:
    return (
        f"#{i} {commands[i]!r}\n    redis: {ref[:300]!r}\n    proxy: {got[:300]!r}\n"
        f"    preceded by: {[c for c in commands[max(0, i - 4) : i]]!r}"
    )


def diff_replies(commands: list[Args], ref: list[bytes], got: list[bytes]) -> list[str]:
    assert len(ref) == len(got) == len(commands)
    return [
        describe(commands, i, r, g)
        for i, (r, g) in enumerate(zip(ref, got, strict=True))
        if not same_reply(commands[i], r, g)
    ]


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["plain", "defended"])
def proxy(backends3: list[RedisServer], request: pytest.FixtureRequest) -> Iterator[ProxyThread]:
    """Every test twice: as shipped, and with every cache defence on (tests/support/runner.py)."""
    with proxy_for(
        [b.addr for b in backends3], DEFENDED if request.param == "defended" else ""
    ) as p:
        yield p


@pytest.fixture
def fresh(backends3: list[RedisServer], reference: RedisServer) -> None:
    for server in [*backends3, reference]:
        server.client().flushall()
        server.client().script_flush()


def _connect(port: int, proto: int) -> RespConn:
    conn = RespConn(port)
    if proto == 3:
        raw, value = conn.call("HELLO", "3")
        assert isinstance(value, Agg) and value.kind == "%", raw
    return conn


def _sequential(port: int, proto: int, commands: list[Args]) -> list[bytes]:
    with _connect(port, proto) as conn:
        return [conn.call(*c)[0] for c in commands]


def _pipelined(port: int, proto: int, commands: list[Args]) -> list[bytes]:
    with _connect(port, proto) as conn:
        return conn.pipeline(commands)


def _check(mismatches: list[str], total: int) -> None:
    assert not mismatches, f"{len(mismatches)} of {total} replies differ:\n" + "\n".join(
        mismatches[:8]
    )


# -- tests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("seed", "proto"), [(1, 2), (2, 3), (3, 2), (4, 3)])
def test_one_by_one(
    fresh: None, proxy: ProxyThread, reference: RedisServer, seed: int, proto: int
) -> None:
    commands = command_stream(seed)
    got: list[bytes] = []
    ref: list[bytes] = []
    with _connect(proxy.port, proto) as pc, _connect(reference.port, proto) as rc:
        for args in commands:  # interleaved, so TTLs and clocks line up
            ref.append(rc.call(*args)[0])
            got.append(pc.call(*args)[0])
    _check(diff_replies(commands, ref, got), len(commands))


@pytest.mark.parametrize(("seed", "proto"), [(11, 2), (12, 3)])
def test_pipelined(
    fresh: None, proxy: ProxyThread, reference: RedisServer, seed: int, proto: int
) -> None:
    commands = command_stream(seed)
    ref = _pipelined(reference.port, proto, commands)
    got = _pipelined(proxy.port, proto, commands)
    _check(diff_replies(commands, ref, got), len(commands))


@pytest.mark.parametrize("proto", [2, 3])
def test_stream_cut_at_random_bytes(
    fresh: None, proxy: ProxyThread, reference: RedisServer, proto: int
) -> None:
    """The same stream, written in pieces of 1..300 bytes: the proxy reads requests cut anywhere
    (at 6d2a750 a cut right after an element made the rest parse as inline commands)."""
    commands = command_stream(30 + proto)
    rng = random.Random(proto)
    cuts = iter(lambda: rng.randint(1, 300), 0)
    ref = _pipelined(reference.port, proto, commands)
    with _connect(proxy.port, proto) as conn:
        got = stream(conn, commands, cuts)
    _check(diff_replies(commands, ref, got), len(commands))


def test_final_state_matches(
    fresh: None, proxy: ProxyThread, reference: RedisServer, backends3: list[RedisServer]
) -> None:
    """After a stream, every key holds the same type and content behind the proxy as in Redis."""
    commands = [c for c in command_stream(21) if c[0].upper() not in (b"EVAL", b"EVALSHA")]
    _pipelined(reference.port, 2, commands)
    _pipelined(proxy.port, 2, commands)
    probes: list[Args] = []
    for k in ALL_KEYS:
        probes += [[b"TYPE", k], [b"DUMP", k]]
    ref = _sequential(reference.port, 2, probes)
    got = _sequential(proxy.port, 2, probes)
    # DUMP of a hashtable-encoded set depends on the hash seed; compare only keys whose TYPE
    # matches and whose DUMP is seed-independent, the rest through their members.
    mismatches = []
    for i in range(0, len(probes), 2):
        if ref[i] != got[i]:
            mismatches.append(describe(probes, i, ref[i], got[i]))
        elif ref[i] != b"+set\r\n" and ref[i + 1] != got[i + 1]:
            mismatches.append(describe(probes, i + 1, ref[i + 1], got[i + 1]))
    _check(mismatches, len(probes))
    dbsize = _sequential(reference.port, 2, [[b"DBSIZE"]])
    assert _sequential(proxy.port, 2, [[b"DBSIZE"]]) == dbsize
    assert sum(b.client().dbsize() for b in backends3) == parse(dbsize[0])[0]


def test_hello_matches_redis(proxy: ProxyThread, reference: RedisServer) -> None:
    for proto in (2, 3):
        with RespConn(proxy.port) as pc, RespConn(reference.port) as rc:
            _, got = pc.call("HELLO", proto)
            _, ref = rc.call("HELLO", proto)
        got_map = dict(_pairs(got.items if isinstance(got, Agg) else tuple(got)))  # type: ignore[arg-type]
        ref_map = dict(_pairs(ref.items if isinstance(ref, Agg) else tuple(ref)))  # type: ignore[arg-type]
        assert got_map.keys() == ref_map.keys()
        for name in (b"server", b"proto", b"mode", b"role", b"modules"):
            assert got_map[name] == ref_map[name], name


# -- known differences that are bugs -------------------------------------------------------------
def test_ping_arity_like_redis(proxy: ProxyThread, reference: RedisServer) -> None:
    with RespConn(proxy.port) as pc, RespConn(reference.port) as rc:
        assert pc.call("PING", "a", "b")[0] == rc.call("PING", "a", "b")[0]


def test_sort_by_and_get_patterns(fresh: None, proxy: ProxyThread, reference: RedisServer) -> None:
    setup: list[Args] = [[b"RPUSH", b"ids", *(b"%d" % i for i in range(1, 31))]]
    for i in range(1, 31):
        setup += [[b"SET", b"w_%d" % i, b"%d" % (100 - i)], [b"SET", b"o_%d" % i, b"obj%d" % i]]
    queries: list[Args] = [
        [b"SORT", b"ids", b"BY", b"w_*"],
        [b"SORT", b"ids", b"BY", b"nosort", b"GET", b"o_*"],
        [b"SORT", b"ids", b"BY", b"w_*", b"GET", b"#", b"GET", b"o_*"],
    ]
    _sequential(reference.port, 2, setup)
    _sequential(proxy.port, 2, setup)
    ref = _sequential(reference.port, 2, queries)
    got = _sequential(proxy.port, 2, queries)
    for args, r, g in zip(queries, ref, got, strict=True):
        assert g == r or g.startswith(b"-"), describe(queries, queries.index(args), r, g)


def test_copy_to_another_db_is_refused(
    fresh: None, proxy: ProxyThread, backends3: list[RedisServer]
) -> None:
    with RespConn(proxy.port) as pc:
        pc.call("SET", "{c}:src", "v")
        _, reply = pc.call("COPY", "{c}:src", "{c}:dst", "DB", "1")
    leaked = [b.port for b in backends3 if redis.Redis(port=b.port, db=1, protocol=2).dbsize()]
    for b in backends3:
        redis.Redis(port=b.port, db=1, protocol=2).flushdb()
    assert isinstance(reply, Err), reply
    assert not leaked
