"""proxy.migration.shares: moved_shares against ring arithmetic and brute-force samples."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from proxy.config.schema import parse_config
from proxy.migration.shares import moved_shares, share_method
from proxy.routing.topology import PoolTopology, build_pool

OLD = ["127.0.0.1:7001:1 r1", "127.0.0.1:7002:1 r2", "127.0.0.1:7003:1 r3"]
NEW = [*OLD, "127.0.0.1:7004:1 r4", "127.0.0.1:7005:1 r5"]


def pool(servers: list[str], distribution: str = "ketama", hash_name: str = "murmur3",
         tag: str = "{}") -> PoolTopology:  # fmt: skip
    text = (
        f"pools: {{p: {{distribution: {distribution}, hash: {hash_name}, hash_tag: '{tag}',"
        f" servers: {servers}}}}}"
    )
    return build_pool(parse_config(text, env={}).pool("p"))


def sampled(
    source: PoolTopology, target: PoolTopology, n: int = 60_000
) -> dict[tuple[str, str], float]:
    rnd = random.Random(7)
    counts: Counter[tuple[str, str]] = Counter()
    for _ in range(n):
        key = b"key:%d" % rnd.getrandbits(64)
        pair = (source.addr_for(key), target.addr_for(key))
        if pair[0] != pair[1]:
            counts[pair] += 1
    return {pair: c / n for pair, c in counts.items()}


def test_ketama_three_to_five_moves_only_to_the_new_servers() -> None:
    source, target = pool(OLD), pool(NEW)
    shares = moved_shares(source, target)
    assert share_method(source, target) == "exact"
    assert {dst for _, dst in shares} == {"127.0.0.1:7004", "127.0.0.1:7005"}
    assert {src for src, _ in shares} == set(source.addrs)
    new_share = sum(target.ring.shares()[3:])
    assert sum(shares.values()) == pytest.approx(new_share, abs=1e-12)
    assert 0.35 < sum(shares.values()) < 0.45  # ~2/5


def test_modula_doubling_moves_half_each_old_server_to_one_new_one() -> None:
    two = ["127.0.0.1:7001:1 r1", "127.0.0.1:7002:1 r2"]
    four = [*two, "127.0.0.1:7003:1 r3", "127.0.0.1:7004:1 r4"]
    shares = moved_shares(pool(two, "modula"), pool(four, "modula"))
    assert shares == {
        ("127.0.0.1:7001", "127.0.0.1:7003"): 0.25,
        ("127.0.0.1:7002", "127.0.0.1:7004"): 0.25,
    }


@pytest.mark.parametrize("distribution", ["ketama", "modula"])
def test_identical_rings_move_nothing(distribution: str) -> None:
    assert moved_shares(pool(OLD, distribution), pool(list(reversed(OLD)), distribution)) == {}


def test_a_named_server_at_a_new_address_moves_only_its_own_keys() -> None:
    by_name = ["127.0.0.1:7001:1 r1", "127.0.0.1:7002:1 r2", "127.0.0.1:7009:1 r3"]
    shares = moved_shares(pool(OLD), pool(by_name))  # r3's keys go to its new address
    assert set(shares) == {("127.0.0.1:7003", "127.0.0.1:7009")}
    assert shares[("127.0.0.1:7003", "127.0.0.1:7009")] == pytest.approx(pool(OLD).ring.shares()[2])


@pytest.mark.parametrize(
    ("source", "target", "method"),
    [
        (pool(OLD), pool(NEW), "exact"),
        (pool(OLD), pool(["127.0.0.1:7001:3 r1", "127.0.0.1:7006:1 r6"]), "exact"),
        (pool(OLD, "modula"), pool(NEW, "modula"), "exact"),
        (pool(OLD), pool(NEW, "modula"), "exact"),
        (pool(OLD, "modula"), pool(NEW), "exact"),
        (pool(OLD), pool(NEW, hash_name="md5"), "independent"),
        (pool(OLD, "modula"), pool(NEW, "modula", tag=""), "independent"),
    ],
)
def test_moved_shares_match_a_brute_force_sample(
    source: PoolTopology, target: PoolTopology, method: str
) -> None:
    assert share_method(source, target) == method
    exact, sample = moved_shares(source, target), sampled(source, target)
    assert set(sample) <= set(exact)
    for pair, share in exact.items():
        assert sample.get(pair, 0.0) == pytest.approx(share, abs=0.01), pair
    assert sum(sample.values()) == pytest.approx(sum(exact.values()), abs=0.01)


def test_huge_modula_weights_fall_back_to_a_uniform_sample() -> None:
    a = pool(["127.0.0.1:7001:1000003 r1", "127.0.0.1:7002:1 r2"], "modula")
    b = pool(["127.0.0.1:7001:999983 r1", "127.0.0.1:7002:1 r2"], "modula")
    assert share_method(a, b) == "uniform sample"
    assert sum(moved_shares(a, b).values()) < 0.01
