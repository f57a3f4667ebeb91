"""A concurrent write load with an exact model, for tests that change the proxy under traffic.

Each `Worker` is a thread with one redis-py connection (RESP2 or RESP3, retries off, so a dropped
connection is an error, not a silent reconnect) that owns a disjoint key range: it is the only
writer of its keys, so its model of them is exact. Every reply is checked against the model as
it arrives (INCRBY's new value, APPEND's new length, a GET's value...); any exception stops the
worker and is kept in `errors`, any reply that differs from the model is kept in `mismatches`.

Key families, one Redis type each (so no WRONGTYPE): `s` strings (SET, SET EX, APPEND, GET), `c`
counters (INCRBY), `h` hashes (HINCRBY, HDEL, HGETALL), `l` lists (RPUSH + LTRIM, LRANGE), `z`
sets (SADD, SREM, SMEMBERS); DEL of one or two keys on any family.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

FAMILIES = "schlz"
TTL_S = 3600  # SET EX / EXPIRE in the load: long, so nothing expires during a test
LIST_KEEP = 6  # LTRIM keeps the last N elements
HASH_FIELDS = 5
SET_MEMBERS = 8
MAX_KEPT = 20  # mismatches kept per worker (the count keeps going)


def connect(port: int, protocol: int) -> redis.Redis:
    """One client, one connection for its whole life (commands and pipelines share the pool's
    only connection): no retries, so a dropped connection is an error, not a silent reconnect."""
    return redis.Redis(
        port=port,
        protocol=protocol,
        max_connections=1,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=10,
        socket_connect_timeout=5,
    )


@dataclass
class Entry:
    """One key as the model holds it."""

    kind: str  # a family letter
    value: Any  # bytes | int | dict[bytes, int] | list[bytes] | set[bytes]
    expire_at: float | None = None  # wall clock seconds; None: no TTL


@dataclass
class Model:
    """What a worker's keys hold now, and the keys that were deleted at least once."""

    keys: dict[bytes, Entry] = field(default_factory=dict)
    deleted: set[bytes] = field(default_factory=set)

    def drop(self, key: bytes) -> bool:
        if key in self.keys:
            del self.keys[key]
            self.deleted.add(key)
            return True
        return False


def normalize(kind: str, reply: Any) -> Any:
    """A full read's reply (RESP2 or RESP3, any redis-py callback) as the model's value."""
    if reply is None:
        return None
    if kind == "h":
        if isinstance(reply, list):
            reply = dict(zip(reply[::2], reply[1::2], strict=True))
        return {k: int(v) for k, v in reply.items()} or None
    if kind == "l":
        return list(reply) or None
    if kind == "z":
        return set(reply) or None
    if kind == "c":
        return int(reply)
    return reply


READ_COMMAND = {"s": "GET", "c": "GET", "h": "HGETALL", "l": "LRANGE", "z": "SMEMBERS"}


def read_args(key: bytes, kind: str) -> list[Any]:
    args: list[Any] = [READ_COMMAND[kind], key]
    if kind == "l":
        args += [0, -1]
    return args


def expected_value(entry: Entry | None) -> Any:
    if entry is None:
        return None
    if entry.kind == "h":
        return dict(entry.value) or None
    if entry.kind == "l":
        return list(entry.value) or None
    if entry.kind == "z":
        return set(entry.value) or None
    return entry.value


# An operation: the command to send and the reply the model predicts (computed, and the model
# updated, when the command is queued: the worker is its keys' only writer).
Op = tuple[list[Any], Callable[[Any], bool], str]


def _eq(expected: Any) -> Callable[[Any], bool]:
    return lambda reply: reply == expected


def _ok(reply: Any) -> bool:
    return reply is True or reply == b"OK"


class Worker(threading.Thread):
    """Random writes (and some reads) on its own keys until stopped; `ops` counts replies."""

    def __init__(
        self,
        port: int,
        name: str,
        *,
        protocol: int = 2,
        pipeline: int = 0,  # 0: one command at a time, else commands per pipeline
        keys_per_family: int = 40,
        seed: int = 0,
        reads: float = 0.2,  # share of operations that read and check a key
        multi_key_del: float = 0.5,  # share of DELs that name two keys of the range
    ) -> None:
        super().__init__(name=f"load-{name}", daemon=True)
        self.port = port
        self.prefix = name.encode()
        self.protocol = protocol
        self.depth = pipeline
        self.per_family = keys_per_family
        self.rng = random.Random(seed)
        self.read_share = reads
        self.multi_key_del = multi_key_del
        self.model = Model()
        self.ops = 0
        self.errors: list[BaseException] = []
        self.mismatches: list[str] = []
        self.mismatch_count = 0
        self.stop_event = threading.Event()
        self.client_id: int | None = None  # the proxy's CLIENT ID of the connection, at start
        self.client_id_end: int | None = None
        self.client = connect(port, protocol)

    # -- keys ------------------------------------------------------------------------------
    def key(self, family: str, i: int) -> bytes:
        return b"%s:%s:%d" % (self.prefix, family.encode(), i)

    def all_keys(self) -> Iterator[tuple[bytes, str]]:
        for family in FAMILIES:
            for i in range(self.per_family):
                yield self.key(family, i), family

    # -- the load --------------------------------------------------------------------------
    def prepopulate(self, ttl_every: int = 4) -> None:
        """Write every key of the range once (pipelined); every `ttl_every`th key gets a TTL."""
        pipe = self.client.pipeline(transaction=False)
        checks: list[tuple[Callable[[Any], bool], str]] = []
        for n, (key, family) in enumerate(self.all_keys()):
            ttl = n % ttl_every == 0
            for args, check, what in self._create(key, family, ttl):
                pipe.execute_command(*args)
                checks.append((check, what))
        self._check_all(pipe.execute(raise_on_error=True), checks)

    def _create(self, key: bytes, family: str, ttl: bool) -> list[Op]:
        rng, m = self.rng, self.model
        expire_at = time.time() + TTL_S if ttl else None
        if family == "s":
            value = b"v%d" % rng.randrange(1 << 30)
            m.keys[key] = Entry("s", value, expire_at)
            args: list[Any] = ["SET", key, value] + (["EX", TTL_S] if ttl else [])
            return [(args, _ok, f"SET {key!r}")]
        if family == "c":
            n = rng.randrange(1000)
            m.keys[key] = Entry("c", n)
            ops: list[Op] = [(["SET", key, n], _ok, f"SET {key!r}")]
        elif family == "h":
            fields = {b"f%d" % i: rng.randrange(100) for i in range(HASH_FIELDS)}
            m.keys[key] = Entry("h", dict(fields))
            flat: list[Any] = [x for kv in fields.items() for x in kv]
            ops = [(["HSET", key, *flat], _eq(len(fields)), f"HSET {key!r}")]
        elif family == "l":
            items = [b"e%d" % rng.randrange(1000) for _ in range(LIST_KEEP)]
            m.keys[key] = Entry("l", list(items))
            ops = [(["RPUSH", key, *items], _eq(len(items)), f"RPUSH {key!r}")]
        else:
            members = {b"m%d" % i for i in range(SET_MEMBERS) if rng.random() < 0.6} or {b"m0"}
            m.keys[key] = Entry("z", set(members))
            ops = [(["SADD", key, *members], _eq(len(members)), f"SADD {key!r}")]
        if ttl:
            m.keys[key].expire_at = expire_at
            ops.append((["EXPIRE", key, TTL_S], _eq(1), f"EXPIRE {key!r}"))
        return ops

    def next_op(self) -> Op:
        rng, m = self.rng, self.model
        family = rng.choice(FAMILIES)
        key = self.key(family, rng.randrange(self.per_family))
        entry = m.keys.get(key)
        if rng.random() < self.read_share:
            return read_args(key, family), self._read_check(family, entry), f"read {key!r}"
        roll = rng.random()
        if roll < 0.08:  # DEL one key, or two keys of the range (split per backend)
            keys = [key]
            if rng.random() < self.multi_key_del:
                other = self.key(rng.choice(FAMILIES), rng.randrange(self.per_family))
                if other != key:
                    keys.append(other)
            gone = sum(m.drop(k) for k in keys)
            return ["DEL", *keys], _eq(gone), f"DEL {keys!r}"
        if family == "s":
            return self._string_op(key, entry, roll)
        if family == "c":
            n = rng.randrange(-50, 100)
            value = (entry.value if entry else 0) + n
            if entry is None:
                m.keys[key] = Entry("c", value)
            else:
                entry.value = value
            return ["INCRBY", key, n], _eq(value), f"INCRBY {key!r}"
        if family == "h":
            fld = b"f%d" % rng.randrange(HASH_FIELDS + 2)
            if roll < 0.3:
                had = entry is not None and entry.value.pop(fld, None) is not None
                if entry is not None and not entry.value:
                    m.drop(key)
                return ["HDEL", key, fld], _eq(int(had)), f"HDEL {key!r} {fld!r}"
            n = rng.randrange(1, 20)
            if entry is None:
                entry = m.keys[key] = Entry("h", {})
            entry.value[fld] = entry.value.get(fld, 0) + n
            return ["HINCRBY", key, fld, n], _eq(entry.value[fld]), f"HINCRBY {key!r}"
        if family == "l":
            items = [b"e%d" % rng.randrange(1000) for _ in range(rng.randrange(1, 4))]
            if entry is None:
                entry = m.keys[key] = Entry("l", [])
            entry.value.extend(items)
            length = len(entry.value)
            entry.value[:] = entry.value[-LIST_KEEP:]
            return ["RPUSH", key, *items], _eq(length), f"RPUSH {key!r}"
        member = b"m%d" % rng.randrange(SET_MEMBERS)
        if roll < 0.45:
            had = entry is not None and member in entry.value
            if had:
                entry.value.discard(member)
                if not entry.value:
                    m.drop(key)
            return ["SREM", key, member], _eq(int(had)), f"SREM {key!r}"
        if entry is None:
            entry = m.keys[key] = Entry("z", set())
        added = member not in entry.value
        entry.value.add(member)
        return ["SADD", key, member], _eq(int(added)), f"SADD {key!r}"

    def _string_op(self, key: bytes, entry: Entry | None, roll: float) -> Op:
        m, rng = self.model, self.rng
        if roll < 0.35 and entry is not None:
            suffix = b"+%d" % rng.randrange(100)
            entry.value += suffix
            return ["APPEND", key, suffix], _eq(len(entry.value)), f"APPEND {key!r}"
        value = b"v%d" % rng.randrange(1 << 30)
        if roll < 0.6:
            m.keys[key] = Entry("s", value, time.time() + TTL_S)
            return ["SET", key, value, "EX", TTL_S], _ok, f"SET EX {key!r}"
        m.keys[key] = Entry("s", value)
        return ["SET", key, value], _ok, f"SET {key!r}"

    @staticmethod
    def _read_check(family: str, entry: Entry | None) -> Callable[[Any], bool]:
        expected = expected_value(entry)
        return lambda reply: normalize(family, reply) == expected

    def next_ops(self) -> list[Op]:
        """The next operation; an RPUSH comes with its LTRIM (sent in the same batch)."""
        op = self.next_op()
        if op[0][0] != "RPUSH":
            return [op]
        key = op[0][1]
        return [op, (["LTRIM", key, -LIST_KEEP, -1], _ok, f"LTRIM {key!r}")]

    def run(self) -> None:
        try:
            self.client_id = int(self.client.client_id())
            while not self.stop_event.is_set():
                if self.depth:
                    self._run_pipeline()
                else:
                    for args, check, what in self.next_ops():
                        self._check(self.client.execute_command(*args), check, what)
                        self.ops += 1
            self.client_id_end = int(self.client.client_id())
        except BaseException as exc:  # any client-side error fails the test
            self.errors.append(exc)
        finally:
            self.client.close()

    def _run_pipeline(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        checks: list[tuple[Callable[[Any], bool], str]] = []
        while len(checks) < self.depth:
            for args, check, what in self.next_ops():
                pipe.execute_command(*args)
                checks.append((check, what))
        self._check_all(pipe.execute(raise_on_error=True), checks)

    def _check_all(
        self, replies: list[Any], checks: list[tuple[Callable[[Any], bool], str]]
    ) -> None:
        for reply, (check, what) in zip(replies, checks, strict=True):
            self._check(reply, check, what)
        self.ops += len(replies)

    def _check(self, reply: Any, check: Callable[[Any], bool], what: str) -> None:
        if not check(reply):
            self.mismatch_count += 1
            if len(self.mismatches) < MAX_KEPT:
                self.mismatches.append(f"{what}: got {reply!r} (ops {self.ops})")

    def stop(self) -> None:
        self.stop_event.set()
        self.join(30)


class Load:
    """A set of workers: start, wait for progress, stop, and one assertion for client health."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers

    def start(self) -> Load:
        for w in self.workers:
            w.start()
        return self

    def progress(self, n: int) -> Callable[[], bool]:
        """A predicate: every worker answered `n` more replies than now (or one has died)."""
        marks = [w.ops + n for w in self.workers]
        return lambda: all(
            w.ops >= m or not w.is_alive() for w, m in zip(self.workers, marks, strict=True)
        )

    def stop(self) -> None:
        for w in self.workers:
            w.stop_event.set()
        for w in self.workers:
            w.join(30)

    def problems(self) -> list[str]:
        out: list[str] = []
        for w in self.workers:
            out += [f"{w.name}: {type(e).__name__}: {e}" for e in w.errors]
            if w.mismatch_count:
                out.append(f"{w.name}: {w.mismatch_count} replies differ from the model")
                out += [f"{w.name}:   {m}" for m in w.mismatches]
            if w.stop_event.is_set() and w.is_alive():
                out.append(f"{w.name}: did not stop")
            elif w.stop_event.is_set() and not w.errors and w.client_id != w.client_id_end:
                out.append(f"{w.name}: connection changed ({w.client_id} -> {w.client_id_end})")
        return out

    def total_ops(self) -> int:
        return sum(w.ops for w in self.workers)
