"""routing.prefix: the longest-prefix matcher, a keyspace over a default pool plus prefix routes,
and the planner over such a keyspace (multi-key splits across pools, CROSSSLOT, fan-outs).

Pure: pools built from configs, no backend, no loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from proxy.commands.spec import lookup
from proxy.config.schema import PoolConfig, ServerConfig, parse_config
from proxy.routing.plan import plan
from proxy.routing.prefix import LongestPrefix, pool_matcher
from proxy.routing.topology import (
    Keyspace,
    Placement,
    PoolTopology,
    build_keyspace,
    build_pool,
    build_topology,
)


def pool(name: str, first_port: int, count: int) -> PoolTopology:
    servers = tuple(ServerConfig("127.0.0.1", first_port + i) for i in range(count))
    return build_pool(PoolConfig(name, "murmur3", "ketama", "{}", servers))


MAIN = pool("main", 7001, 3)
QUEUES = pool("queues", 7101, 1)
JOBS = pool("jobs", 7201, 2)
KEYS = [b"user:%d" % i for i in range(200)]


@dataclass(frozen=True)
class View:
    read: Placement
    other: Placement
    secondary_writes: bool = False


# --- the matcher ---


def test_longest_prefix_wins_whatever_the_order() -> None:
    items = [(b"rq:", "short"), (b"rq:job:", "long"), (b"r", "shortest")]
    for order in (items, items[::-1]):
        match = LongestPrefix(order).match
        assert match(b"rq:job:1") == "long"
        assert match(b"rq:queue:default") == "short"
        assert match(b"rx") == "shortest"
        assert match(b"user:1") is None
        assert match(b"") is None


def test_a_key_equal_to_a_prefix_matches_it() -> None:
    assert LongestPrefix([(b"rq:", 1)]).match(b"rq:") == 1
    assert LongestPrefix([(b"rq:", 1)]).match(b"rq") is None


def test_prefixes_match_the_whole_key_not_the_hash_tag() -> None:
    match = LongestPrefix([(b"rq:", 1)]).match
    assert match(b"{rq:}x") is None
    assert match(b"rq:{user:1}") == 1


def test_pool_matcher_defaults_to_the_route_pool() -> None:
    pool_of = pool_matcher("main", [(b"_kombu.", "queues"), (b"_kombu.binding.", "jobs")])
    assert pool_of(b"_kombu.binding.celery") == "jobs"
    assert pool_of(b"_kombu.other") == "queues"
    assert pool_of(b"celery") == "main"
    assert pool_matcher("main", [])(b"anything") == "main"


# --- the keyspace ---


def test_no_routes_is_the_pool_itself() -> None:
    assert build_keyspace(MAIN, []) is MAIN


def test_keyspace_places_each_key_on_its_pools_ring() -> None:
    space = build_keyspace(MAIN, [(b"rq:", QUEUES), (b"rq:job:", JOBS)])
    assert isinstance(space, Keyspace)
    assert space.addrs == (*MAIN.addrs, *QUEUES.addrs, *JOBS.addrs)
    for key in KEYS:
        assert space.addr_for(key) == MAIN.addr_for(key)
        assert space.addr_for(b"rq:job:" + key) == JOBS.addr_for(b"rq:job:" + key)
        assert space.addr_for(b"rq:q:" + key) == "127.0.0.1:7101"
    # node indexes name one backend each, the default pool's first
    assert {space.node_for(k) for k in KEYS} == {0, 1, 2}
    assert {space.node_for(b"rq:job:" + k) for k in KEYS} == {4, 5}


def test_a_route_may_share_servers_with_the_default_pool() -> None:
    shared = pool("shared", 7001, 1)  # 127.0.0.1:7001 is also a server of MAIN
    space = build_keyspace(MAIN, [(b"rq:", shared)])
    assert all(space.addr_for(b"rq:" + k) == "127.0.0.1:7001" for k in KEYS)
    fanout = plan(lookup([b"DBSIZE"]), [b"DBSIZE"], View(space, space)).primary
    assert [f.addr for f in fanout.fragments] == list(MAIN.addrs)  # each server once


def test_topology_builds_the_routes_and_the_moved_side() -> None:
    text = """
pools:
  main: {servers: ['127.0.0.1:7001', '127.0.0.1:7002']}
  next: {servers: ['127.0.0.1:7003']}
  queues: {servers: ['127.0.0.1:7101']}
route: main
routes: [{prefix: 'rq:', pool: queues}, {prefix: 'x:', pool: main}]
migration: {to: next, phase: double-write}
"""
    topology = build_topology(parse_config(text, env={}), 1, "h")
    assert topology.moved is not None
    for key in KEYS:
        assert topology.keyspace.addr_for(b"rq:" + key) == "127.0.0.1:7101"
        assert topology.moved.addr_for(b"rq:" + key) == "127.0.0.1:7101"  # stays
        assert topology.moved.addr_for(key) == "127.0.0.1:7003"  # follows the migration
        assert topology.moved.addr_for(b"x:" + key) == "127.0.0.1:7003"  # its route too


# --- the planner over a keyspace ---


SPACE = build_keyspace(MAIN, [(b"rq:", QUEUES)])


def test_mget_splits_across_pools_in_key_order() -> None:
    args = [b"MGET", b"rq:a", b"user:1", b"rq:b", b"user:2"]
    primary = plan(lookup(args), args, View(SPACE, SPACE)).primary
    by_addr = {f.addr: f for f in primary.fragments}
    assert by_addr["127.0.0.1:7101"].args == [b"MGET", b"rq:a", b"rq:b"]
    assert by_addr["127.0.0.1:7101"].positions == (0, 2)
    assert primary.nkeys == 4


def test_same_backend_commands_need_one_backend_across_pools() -> None:
    together = [b"RPOPLPUSH", b"rq:queue:a", b"rq:queue:b"]
    assert plan(lookup(together), together, View(SPACE, SPACE)).primary.error is None
    apart = [b"RPOPLPUSH", b"rq:queue:a", b"user:1"]
    refused = plan(lookup(apart), apart, View(SPACE, SPACE)).primary.error
    assert refused is not None and b"CROSSSLOT" in refused


def test_fanout_and_scan_cover_every_pool() -> None:
    dbsize = plan(lookup([b"DBSIZE"]), [b"DBSIZE"], View(SPACE, SPACE)).primary
    assert [f.addr for f in dbsize.fragments] == [*MAIN.addrs, *QUEUES.addrs]
    scan = plan(lookup([b"SCAN", b"3"]), [b"SCAN", b"3"], View(SPACE, SPACE)).primary
    assert scan.scan_count == 4 and scan.fragments[0].addr == "127.0.0.1:7101"


@pytest.mark.parametrize("key", [b"rq:job:1", b"user:1"])
def test_writes_of_keys_both_sides_agree_on_have_no_secondary(key: bytes) -> None:
    args = [b"SET", key, b"v"]
    both = View(SPACE, SPACE, secondary_writes=True)
    assert plan(lookup(args), args, both).secondary is None
