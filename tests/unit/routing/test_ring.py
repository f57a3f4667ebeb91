"""proxy.routing.ring: hash vectors, hash tags, ketama and modula rings, and bad input."""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_left

import mmh3
import pytest

from proxy.routing.ring import (
    DISTRIBUTIONS,
    HASH_NAMES,
    Ring,
    hash_fn,
    hash_tag_key,
    ketama_label,
    ketama_point_count,
    ketama_points,
)

KEYS = [b"key:%d" % i for i in range(20000)]

# From a C build of nc_fnv.c's loop (gcc, x86-64: `char` is signed, so bytes >= 0x80 sign-extend).
FNV1A_64_VECTORS = [
    (b"", 2216829733),
    (b"a", 2248273036),
    (b"foo", 4275688823),
    (b"key:1", 2519685833),
    (b"user:{42}:name", 2586002863),
    (b"\xff\x80\x7f", 1912619183),
    ("héllo".encode(), 3574771936),
]

# Names with a ketama point in common, and the one twemproxy gives the tie to (see the
# integration test, which checks this against nutcracker).
TIES = [
    (("tie253", "tie397"), 667653269, "tie253"),
    (("z785", "a100117"), 2152492440, "z785"),
]


def owner_labels(ring: Ring, keys: list[bytes]) -> list[str]:
    return [ring.labels[ring.node_for(k)] for k in keys]


def test_names() -> None:
    assert HASH_NAMES == ("murmur3", "fnv1a_64", "md5", "crc32a", "crc32")
    assert DISTRIBUTIONS == ("ketama", "modula")


@pytest.mark.parametrize("key", [b"", b"a", b"foo", b"user:1000", bytes(range(256))])
def test_murmur3_is_unsigned_mmh3_with_seed_0(key: bytes) -> None:
    assert hash_fn("murmur3")(key) == mmh3.hash(key, signed=False)


# The CRC-32 check value (ITU-T V.42 / zlib) of "123456789" is 0xCBF43926; twemproxy's crc32 keeps
# bits 16..30 of it (libmemcached's MEMCACHED_HASH_CRC).
@pytest.mark.parametrize(
    ("name", "key", "expected"),
    [
        ("crc32a", b"123456789", 0xCBF43926),
        ("crc32a", b"", 0),
        ("crc32", b"123456789", 0x4BF4),
        ("crc32", b"", 0),
    ],
)
def test_crc32_hashes(name: str, key: bytes, expected: int) -> None:
    assert hash_fn(name)(key) == expected


@pytest.mark.parametrize(("key", "expected"), FNV1A_64_VECTORS)
def test_fnv1a_64_matches_twemproxy(key: bytes, expected: int) -> None:
    assert hash_fn("fnv1a_64")(key) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [(b"", 0xD98C1DD4), (b"foo", 0xDB18BDAC), (b"a", 0xB975C10C)],
)
def test_md5_is_first_four_digest_bytes_little_endian(key: bytes, expected: int) -> None:
    assert hash_fn("md5")(key) == expected
    assert expected == int.from_bytes(hashlib.md5(key).digest()[:4], "little")


def test_every_hash_is_unsigned_32_bit() -> None:
    for name in HASH_NAMES:
        fn = hash_fn(name)
        assert all(0 <= fn(k) < 1 << 32 for k in KEYS[:2000])


def test_unknown_hash_name() -> None:
    with pytest.raises(ValueError, match="unknown hash"):
        hash_fn("crc16")


def test_ketama_label_follows_twemproxy_conf_rule() -> None:
    assert ketama_label("10.0.0.1", 6379, None) == "10.0.0.1:6379"
    assert ketama_label("10.0.0.1", 11211, None) == "10.0.0.1"
    assert ketama_label("10.0.0.1", 6379, "shard-a") == "shard-a"
    assert ketama_label("10.0.0.1", 11211, "shard-a") == "shard-a"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (b"user:{42}:name", b"42"),
        (b"{}", b"{}"),
        (b"{", b"{"),
        (b"a{}b", b"a{}b"),
        (b"{x}{y}", b"x"),
        (b"{}{y}", b"{}{y}"),  # the first open byte decides; an empty tag means the whole key
        (b"}{x}", b"x"),
        (b"a}b{c", b"a}b{c"),
        (b"{{x}}", b"{x"),
        (b"plain", b"plain"),
        (b"", b""),
    ],
)
def test_hash_tag_key(key: bytes, expected: bytes) -> None:
    assert hash_tag_key(key, b"{}") == expected


def test_hash_tag_key_without_tag_or_with_other_bytes() -> None:
    assert hash_tag_key(b"user:{42}", b"") == b"user:{42}"
    assert hash_tag_key(b"a$b$c", b"$$") == b"b"
    assert hash_tag_key(b"a:b:c", b"::") == b"b"


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("hash_name", HASH_NAMES)
def test_ring_with_tag_hashes_only_the_tag(hash_name: str, distribution: str) -> None:
    labels = ["a", "b", "c", "d"]
    ring = Ring(labels, [1, 2, 1, 3], hash_name, distribution, b"{}")
    fn = hash_fn(hash_name)
    keys = [b"user:{%d}:%d" % (i % 50, i) for i in range(2000)] + KEYS[:500]
    keys += [b"{}", b"{", b"a{}b", b"{x}{y}", b"", b"{"]
    for key in keys:
        tagged = hash_tag_key(key, b"{}")
        expected = ring.node_for_hash(fn(tagged) if tagged else 0)
        assert ring.node_for(key) == expected
    assert len({ring.node_for(b"user:{7}:%d" % i) for i in range(100)}) == 1


@pytest.mark.parametrize("hash_name", ["fnv1a_64", "md5"])
def test_empty_key_hashes_to_zero_like_twemproxy(hash_name: str) -> None:
    for distribution in DISTRIBUTIONS:
        ring = Ring(["a", "b", "c"], [1, 1, 1], hash_name, distribution)
        assert ring.node_for(b"") == ring.node_for_hash(0)


@pytest.mark.parametrize(
    ("weights", "points"),
    [
        ((1, 1, 1), [160, 160, 160]),
        ((1, 2, 3), [80, 160, 240]),
        ((3, 1, 4, 1), [212, 68, 284, 68]),
        ((29, 30, 1), [228, 240, 8]),  # float32 arithmetic: exact math would give 232 for 29
        ((1,), [160]),
    ],
)
def test_ketama_point_counts_match_twemproxy(weights: tuple[int, ...], points: list[int]) -> None:
    assert [ketama_point_count(w, sum(weights), len(weights)) for w in weights] == points
    labels = [f"s{i}" for i in range(len(weights))]
    _, owners = ketama_points(labels, weights)
    assert [owners.count(i) for i in range(len(weights))] == points


def test_ketama_points_are_md5_of_label_dash_index() -> None:
    points, owners = ketama_points(["only"], [1])
    digest = hashlib.md5(b"only-0").digest()
    for i in range(4):
        assert int.from_bytes(digest[4 * i : 4 * i + 4], "little") in points
    assert points == sorted(points) and set(owners) == {0}


@pytest.mark.parametrize("n", [3, 5])
def test_murmur3_ketama_spreads_keys_evenly(n: int) -> None:
    ring = Ring([f"redis-{i}" for i in range(n)], [1] * n)
    shares = ring.shares()
    assert sum(shares) == pytest.approx(1.0)
    assert all(0.75 / n < s < 1.25 / n for s in shares), shares
    counts = [0] * n
    for key in KEYS:
        counts[ring.node_for(key)] += 1
    for count, share in zip(counts, shares, strict=True):
        assert count / len(KEYS) == pytest.approx(share, abs=0.02)


def test_weights_are_proportional() -> None:
    ring = Ring(["10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.3:6379"], [1, 2, 3])
    shares = ring.shares()
    for share, weight in zip(shares, (1, 2, 3), strict=True):
        assert share == pytest.approx(weight / 6, rel=0.25)
    assert shares[0] < shares[1] < shares[2]


def test_adding_a_node_moves_only_its_share_and_only_to_it() -> None:
    three = Ring(["r0", "r1", "r2"], [1, 1, 1])
    four = Ring(["r0", "r1", "r2", "r3"], [1, 1, 1, 1])
    before, after = owner_labels(three, KEYS), owner_labels(four, KEYS)
    moved = [i for i in range(len(KEYS)) if before[i] != after[i]]
    assert {after[i] for i in moved} == {"r3"}
    assert len(moved) == after.count("r3")
    assert 0.15 < len(moved) / len(KEYS) < 0.35


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_listing_order_does_not_move_keys(distribution: str) -> None:
    labels, weights = ["zeta", "b", "mid", "alpha"], [1, 2, 3, 1]
    ring = Ring(labels, weights, "md5", distribution)
    rng = random.Random(7)
    order = list(range(4))
    rng.shuffle(order)
    shuffled = Ring([labels[i] for i in order], [weights[i] for i in order], "md5", distribution)
    assert owner_labels(ring, KEYS[:3000]) == owner_labels(shuffled, KEYS[:3000])


def test_modula_places_hash_mod_total_weight_in_twemproxy_order() -> None:
    ring = Ring(["c", "a", "b"], [3, 1, 2], "md5", "modula")
    # twemproxy sorts servers by name (shorter first, then bytewise): a, b, b, c, c, c
    continuum = ["a", "b", "b", "c", "c", "c"]
    md5 = hash_fn("md5")
    for key in KEYS[:3000]:
        assert ring.labels[ring.node_for(key)] == continuum[md5(key) % 6]
    assert [ring.labels[ring.node_for_hash(h)] for h in range(7)] == [*continuum, "a"]
    assert ring.shares() == pytest.approx([0.5, 1 / 6, 1 / 3])


def test_modula_sorts_shorter_labels_first() -> None:
    ring = Ring(["zeta", "b", "mid"], [1, 1, 1], "fnv1a_64", "modula")
    assert [ring.labels[ring.node_for_hash(h)] for h in range(3)] == ["b", "mid", "zeta"]


def test_modula_with_huge_weights() -> None:
    ring = Ring(["a", "b"], [100000, 300000], "murmur3", "modula")
    assert ring.node_for_hash(99999) == 0
    assert ring.node_for_hash(100000) == 1
    assert ring.node_for_hash(400000) == 0
    assert ring.shares() == [0.25, 0.75]


@pytest.mark.parametrize("weights", [(1, 1, 1), (1, 2, 3), (5, 1, 1, 1, 1, 1, 1, 1)])
def test_ketama_lookup_is_first_point_at_or_above_the_hash(weights: tuple[int, ...]) -> None:
    labels = [f"node-{i}" for i in range(len(weights))]
    ring = Ring(labels, weights)
    points, owners = ketama_points(labels, weights)

    def reference(h: int) -> int:
        i = bisect_left(points, h)
        return owners[i] if i < len(points) else owners[0]

    rng = random.Random(1)
    probes = [0, 1, (1 << 32) - 1, points[-1], points[-1] + 1, points[0], points[0] - 1]
    probes += [p + d for p in points for d in (-1, 0, 1) if 0 <= p + d < 1 << 32]
    probes += [rng.randrange(1 << 32) for _ in range(20000)]
    assert all(ring.node_for_hash(h) == reference(h) for h in probes)
    assert ring.node_for_hash((1 << 32) - 1) == owners[0]  # wraps to the first point


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(("names", "point", "winner"), TIES)
def test_ketama_tie_goes_to_label_sorting_first(
    names: tuple[str, str], point: int, winner: str, reverse: bool
) -> None:
    if reverse:
        names = (names[1], names[0])
    points, _ = ketama_points(names, (1, 1))
    assert points.count(point) == 2
    ring = Ring(names, (1, 1), "md5")
    assert ring.labels[ring.node_for_hash(point)] == winner
    assert ring.labels[ring.node_for_hash(point - 1)] == winner


def test_ketama_shares_sum_to_one_and_track_points() -> None:
    ring = Ring(["a", "b", "c", "d"], [1, 1, 1, 1], "fnv1a_64")
    assert sum(ring.shares()) == pytest.approx(1.0)
    assert len(ring) == 4


def test_ring_attributes_and_immutability() -> None:
    ring = Ring(["a", "b"], [1, 2], "md5", "modula", b"{}")
    assert ring.labels == ("a", "b")
    assert ring.weights == (1, 2)
    assert (ring.hash_name, ring.distribution, ring.hash_tag) == ("md5", "modula", b"{}")
    with pytest.raises(AttributeError):
        ring.labels = ("c",)
    with pytest.raises(AttributeError):
        del ring.weights
    assert "Ring(labels=('a', 'b')" in repr(ring)


def test_single_node_owns_everything() -> None:
    for distribution in DISTRIBUTIONS:
        ring = Ring(["solo"], [7], "fnv1a_64", distribution)
        assert {ring.node_for(k) for k in KEYS[:500]} == {0}
        assert ring.shares() == [1.0]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([], []), "at least one"),
        ((["a", "b"], [1]), "2 labels but 1 weights"),
        ((["a", "b"], [1, 0]), "positive integer"),
        ((["a", "b"], [1, -2]), "positive integer"),
        ((["a", "b"], [1, True]), "positive integer"),
        ((["a", "b", "a"], [1, 1, 1]), "duplicate"),
        ((["a", ""], [1, 1]), "label"),
        ((["a", "x" * 256], [1, 1]), "label"),
        ((["a"], [1], "crc16"), "unknown hash"),
        ((["a"], [1], "md5", "random"), "unknown distribution"),
        ((["a"], [1], "md5", "ketama", b"{"), "hash tag"),
        ((["a"], [1], "md5", "ketama", b"{}}"), "hash tag"),
    ],
)
def test_bad_rings_are_rejected(args: tuple[object, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Ring(*args)  # type: ignore[arg-type]


def test_md5_function_is_md5_whichever_module_gives_it() -> None:
    """hash_md5 uses CPython's own `_md5` when there is one, hashlib's otherwise."""
    from proxy.routing.ring import _md5_function

    md5 = _md5_function()
    for key in [b"", b"a", b"key:000000012345", bytes(range(256)) * 3]:
        assert md5(key).digest() == hashlib.md5(key).digest()
