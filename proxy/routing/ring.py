"""Key hashing and rings: which node of a pool owns a key.

Owns the key hashes, hash tags and the ketama / modula rings; fnv1a_64, md5, ketama and modula match
twemproxy 0.5 bit for bit, so a pool can take over a nutcracker keyspace without moving a key.
Invariant: a Ring never changes, and which label owns a key depends only on the key and the set of
(label, weight) pairs, never on their order (twemproxy sorts its servers by name first).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import math
import struct
import zlib
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Final, cast

import mmh3

from proxy.config.schema import DISTRIBUTIONS, HASH_NAMES

if TYPE_CHECKING:  # only types: mypyc compiles i64 to a C int64_t, and nothing imports it
    from mypy_extensions import i64

RING_SIZE = 1 << 32  # key hashes and ketama points are unsigned 32-bit
KETAMA_POINTS_PER_WEIGHT_SHARE = 160  # points per server of average weight (nc_ketama.c)
KETAMA_POINTS_PER_DIGEST = 4  # one md5 digest of "label-i" yields four 32-bit points
# twemproxy formats "label-i" into a 273-byte buffer; longer strings hash memory past its end.
MAX_LABEL_BYTES = 255
DEFAULT_KETAMA_PORT = 11211  # libmemcached compatibility: the port is left out of the label

_U32: Final = 0xFFFFFFFF
# nc_fnv.c truncates the 64-bit constants to 32 bits
_FNV1A_INIT_U32: Final = 0xCBF29CE484222325 & _U32
_FNV1A_PRIME_U32: Final = 0x100000001B3 & _U32
_FOUR_U32_LE = struct.Struct("<4I")
_ONE_U32_LE = struct.Struct("<I")
_FLOAT32 = struct.Struct("<f")


def hash_fnv1a_64(key: bytes) -> int:
    """twemproxy's ``hash_fnv1a_64``: FNV-1a on 32 bits with truncated 64-bit constants."""
    # i64: a machine word in the compiled build (14x faster there), a plain int in pure Python.
    h: i64 = _FNV1A_INIT_U32
    for i in range(len(key)):
        c: i64 = key[i]
        if c >= 0x80:  # nc_fnv.c reads keys as (signed) `char`: bytes >= 0x80 sign-extend
            c |= 0xFFFFFF00
        h = ((h ^ c) * _FNV1A_PRIME_U32) & _U32
    return h


def _md5_function() -> Callable[[bytes], Any]:
    """CPython's own md5 (`_md5`) when the interpreter has it: its object costs half of
    hashlib's OpenSSL context for a short key (230 against 425 ns a key here); else hashlib."""
    try:
        return cast("Callable[[bytes], Any]", importlib.import_module("_md5").md5)
    except ImportError:
        return functools.partial(hashlib.md5, usedforsecurity=False)


_MD5: Final = _md5_function()


def hash_md5(key: bytes) -> int:
    """twemproxy's ``hash_md5``: the first 4 bytes of the md5 digest, little endian."""
    return int(_ONE_U32_LE.unpack_from(_MD5(key).digest())[0])


def hash_crc32(key: bytes) -> int:
    """twemproxy's ``hash_crc32`` (libmemcached's "crc"): bits 16..30 of the CRC-32 of the key."""
    return (zlib.crc32(key) >> 16) & 0x7FFF


_HASHES: dict[str, Callable[[bytes], int]] = {
    # MurmurHash3 x86_32, seed 0, unsigned: mmh3.hash(key, signed=False), minus the keyword parsing.
    "murmur3": mmh3.mmh3_32_uintdigest,
    "fnv1a_64": hash_fnv1a_64,
    "md5": hash_md5,
    # twemproxy's hash_crc32a is the standard CRC-32 (zlib's, in C): as fast as murmur3.
    "crc32a": zlib.crc32,
    "crc32": hash_crc32,
}
assert tuple(_HASHES) == HASH_NAMES  # the config's names, each with its function here


def hash_fn(name: str) -> Callable[[bytes], int]:
    """The key hash called `name`: bytes -> unsigned 32-bit int."""
    try:
        return _HASHES[name]
    except KeyError:
        raise ValueError(f"unknown hash {name!r}; expected one of {HASH_NAMES}") from None


def ketama_label(host: str, port: int, name: str | None) -> str:
    """The string twemproxy's ketama feeds md5 for a server (conf.c): its name, else its address."""
    if name:
        return name
    return host if port == DEFAULT_KETAMA_PORT else f"{host}:{port}"


def hash_tag_key(key: bytes, tag: bytes) -> bytes:
    """The part of `key` that is hashed: the non-empty text between the tag's two bytes, if any.

    The first open byte counts, then the first close byte after it (twemproxy, Redis Cluster).
    """
    if tag and tag[0] in key:
        content, found, _ = key.partition(tag[:1])[2].partition(tag[1:])
        if found and content:
            return content
    return key


def _float32(x: float) -> float:
    """Round to IEEE single precision, as C's `float` arithmetic does after each operation."""
    return float(_FLOAT32.unpack(_FLOAT32.pack(x))[0])


def ketama_point_count(weight: int, total_weight: int, nservers: int) -> int:
    """Points a server gets on the ketama ring, with nc_ketama.c's float32 arithmetic."""
    pct = _float32(_float32(weight) / _float32(total_weight))
    x = _float32(_float32(pct * KETAMA_POINTS_PER_WEIGHT_SHARE) / KETAMA_POINTS_PER_DIGEST)
    x = _float32(_float32(x * _float32(nservers)) + 0.0000000001)
    return math.floor(x) * KETAMA_POINTS_PER_DIGEST


def twemproxy_order(labels: Sequence[str]) -> list[int]:
    """Label indexes in twemproxy's server order: conf.c sorts a pool's servers by name, shorter
    first, then bytewise (string_compare), and builds its continuum in that order, not the file's.
    """
    encoded = [label.encode() for label in labels]
    return sorted(range(len(labels)), key=lambda i: (len(encoded[i]), encoded[i]))


def ketama_points(labels: Sequence[str], weights: Sequence[int]) -> tuple[list[int], list[int]]:
    """The sorted ring points and their owners (indexes into labels), as nc_ketama.c builds them.

    Equal points keep creation order (glibc's qsort is a stable merge sort here) and the lookup
    takes the leftmost, so a tie goes to the server first in twemproxy_order.
    """
    total, n = sum(weights), len(labels)
    values: list[int] = []
    owners: list[int] = []
    for index in twemproxy_order(labels):
        for i in range(ketama_point_count(weights[index], total, n) // KETAMA_POINTS_PER_DIGEST):
            digest = hashlib.md5(f"{labels[index]}-{i}".encode(), usedforsecurity=False).digest()
            values.extend(_FOUR_U32_LE.unpack(digest))
            owners.extend((index,) * KETAMA_POINTS_PER_DIGEST)
    by_value = sorted(range(len(values)), key=values.__getitem__)  # stable
    return [values[i] for i in by_value], [owners[i] for i in by_value]


def _ring_hash(hash_name: str) -> Callable[[bytes], int]:
    """The key hash as twemproxy's server_pool_hash applies it: an empty key hashes to 0."""
    key_hash = hash_fn(hash_name)
    if hash_name in ("murmur3", "crc32a"):
        return key_hash  # both already hash b"" to 0
    return lambda key: key_hash(key) if key else 0


def ketama_table(points: list[int], after: list[int]) -> tuple[list[int], int]:
    """A direct-lookup table over the top bits of the hash, to skip most binary searches.

    Returns (table, shift): ``table[h >> shift]`` is the owner of every hash in that bucket, or -1
    when a point falls inside the bucket and the exact answer needs the binary search.
    """
    bits = min(18, max(16, (len(points) * 64).bit_length()))  # ~1-6% of buckets hold a point
    shift = 32 - bits
    table = [0] * (1 << bits)
    fill_from = 0
    for i, point in enumerate(points):
        bucket = point >> shift
        # Hashes in the buckets before this point's, after the previous point's, all land on it.
        table[fill_from:bucket] = [after[i]] * (bucket - fill_from)
        table[bucket] = -1
        fill_from = bucket + 1
    table[fill_from:] = [after[0]] * (len(table) - fill_from)  # past the last point: wrap around
    return table, shift


def _ketama_locate(
    points: list[int], after: list[int], table: list[int], shift: int
) -> Callable[[int], int]:
    """hash -> node: the first point >= hash, wrapping to the first; `after` ends with after[0]."""

    def locate(h: int) -> int:
        node = table[h >> shift]
        return node if node >= 0 else after[bisect_left(points, h)]

    return locate


def _ketama_node_for(
    points: list[int],
    after: list[int],
    table: list[int],
    shift: int,
    key_hash: Callable[[bytes], int],
    tag: bytes,
) -> Callable[[bytes], int]:
    """key -> node, with _ketama_locate inlined: this is the per-request hot path."""
    if not tag:

        def node_for(key: bytes) -> int:
            h = key_hash(key)
            node = table[h >> shift]
            return node if node >= 0 else after[bisect_left(points, h)]

        return node_for
    # hash_tag_key, inlined. `int in bytes` skips the TypeError that `bytes in bytes` raises and
    # swallows inside CPython; partition beats find (a varargs method: a tuple per call) 2:1.
    tag_byte, tag_open, tag_close = tag[0], tag[:1], tag[1:]

    def node_for_tagged(key: bytes) -> int:
        if tag_byte in key:
            content, found, _ = key.partition(tag_open)[2].partition(tag_close)
            if found and content:
                key = content
        h = key_hash(key)
        node = table[h >> shift]
        return node if node >= 0 else after[bisect_left(points, h)]

    return node_for_tagged


def _modula_locate(labels: Sequence[str], weights: Sequence[int]) -> Callable[[int], int]:
    """hash -> node: nc_modula.c's continuum holds each node `weight` times, in twemproxy_order."""
    order, total = twemproxy_order(labels), sum(weights)
    if total <= 1 << 16:
        continuum = [i for i in order for _ in range(weights[i])]
        return lambda h: continuum[h % total]
    ends = list(accumulate(weights[i] for i in order))  # the same continuum, run-length encoded
    return lambda h: order[bisect_right(ends, h % total)]


def _tagged_node_for(
    locate: Callable[[int], int], key_hash: Callable[[bytes], int], tag: bytes
) -> Callable[[bytes], int]:
    """key -> node for distributions off the hot path (modula)."""
    if not tag:
        return lambda key: locate(key_hash(key))

    def node_for(key: bytes) -> int:
        return locate(key_hash(hash_tag_key(key, tag)))

    return node_for


def _check(
    labels: Sequence[str],
    weights: Sequence[int],
    hash_name: str,
    distribution: str,
    hash_tag: bytes,
) -> None:
    if not labels:
        raise ValueError("a ring needs at least one node")
    if len(labels) != len(weights):
        raise ValueError(f"{len(labels)} labels but {len(weights)} weights")
    for label in labels:
        if not label or len(label.encode()) > MAX_LABEL_BYTES:
            raise ValueError(f"node label {label!r} must be 1..{MAX_LABEL_BYTES} bytes")
    if len(set(labels)) != len(labels):
        dupes = sorted({label for label in labels if labels.count(label) > 1})
        raise ValueError(f"duplicate node labels: {dupes}")
    checked: Sequence[object] = weights  # compiled code would read True as an int: 1
    for label, weight in zip(labels, checked, strict=True):
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 < weight <= _U32:
            raise ValueError(f"node {label!r}: weight must be a positive integer, got {weight!r}")
    if sum(weights) > _U32:
        raise ValueError("total weight does not fit twemproxy's 32-bit counter")
    if hash_name not in HASH_NAMES:
        raise ValueError(f"unknown hash {hash_name!r}; expected one of {HASH_NAMES}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; expected one of {DISTRIBUTIONS}")
    if hash_tag and len(hash_tag) != 2:
        raise ValueError(f"hash tag must be empty or two bytes like b'{{}}', got {hash_tag!r}")


class Ring:
    """Which of a pool's nodes owns each key. Immutable after construction.

    ``node_for`` is an attribute holding a closure specialised for the ring's distribution and hash
    tag, because it runs once per request: it applies the tag, hashes, and finds the owner.
    """

    __slots__ = (
        "_locate",
        "_owners",
        "_points",
        "distribution",
        "hash_name",
        "hash_tag",
        "labels",
        "node_for",
        "weights",
    )

    labels: tuple[str, ...]
    weights: tuple[int, ...]
    hash_name: str
    distribution: str
    hash_tag: bytes
    node_for: Callable[[bytes], int]  # key -> index into labels of its owner
    _locate: Callable[[int], int]  # key hash -> index into labels
    _points: list[int]  # ketama: sorted ring points (empty for modula)
    _owners: list[int]  # ketama: owner of each point, then the first owner again (wrap-around)

    def __init__(
        self,
        labels: Sequence[str],
        weights: Sequence[int],
        hash_name: str = "murmur3",
        distribution: str = "ketama",
        hash_tag: bytes = b"",
    ) -> None:
        _check(labels, weights, hash_name, distribution, hash_tag)
        # super().__setattr__, not object.__setattr__: the one spelling mypyc compiles too.
        super().__setattr__("labels", tuple(labels))
        super().__setattr__("weights", tuple(weights))
        super().__setattr__("hash_name", hash_name)
        super().__setattr__("distribution", distribution)
        super().__setattr__("hash_tag", bytes(hash_tag))
        key_hash = _ring_hash(hash_name)
        if distribution == "ketama":
            # Never empty: the heaviest node's share earns it at least 39 digests' worth of points.
            points, owners = ketama_points(self.labels, self.weights)
            owners.append(owners[0])
            table, shift = ketama_table(points, owners)
            node_for = _ketama_node_for(points, owners, table, shift, key_hash, self.hash_tag)
            super().__setattr__("_points", points)
            super().__setattr__("_owners", owners)
            super().__setattr__("_locate", _ketama_locate(points, owners, table, shift))
            super().__setattr__("node_for", node_for)
        else:
            locate = _modula_locate(self.labels, self.weights)
            super().__setattr__("_points", [])
            super().__setattr__("_owners", [])
            super().__setattr__("_locate", locate)
            super().__setattr__("node_for", _tagged_node_for(locate, key_hash, self.hash_tag))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Ring is immutable (tried to set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Ring is immutable (tried to delete {name!r})")

    def node_for_hash(self, h: int) -> int:
        """Index of the node owning key hash `h` (of the tag-reduced key)."""
        return self._locate(h)

    def shares(self) -> list[float]:
        """Fraction of the hash space each node owns; sums to 1.0."""
        if self.distribution == "modula":
            total = sum(self.weights)
            return [w / total for w in self.weights]
        owned = [0] * len(self.labels)
        previous = self._points[-1] - RING_SIZE  # the first point also owns the wrap-around arc
        for point, owner in zip(self._points, self._owners, strict=False):
            owned[owner] += point - previous
            previous = point
        return [n / RING_SIZE for n in owned]

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"Ring(labels={self.labels!r}, weights={self.weights!r}, hash_name={self.hash_name!r},"
            f" distribution={self.distribution!r}, hash_tag={self.hash_tag!r})"
        )
