"""The admin commands tools call, through the proxy: CLIENT LIST/KILL over the proxy's own
clients, RANDOMKEY, CONFIG GET merged, INFO memory/stats summed over the backends, FUNCTION
LOAD/DELETE/RESTORE all or nothing, CLIENT SETINFO as Redis 7.0.15 answers it.

Error replies are compared byte for byte with a plain redis-server 7.0.15.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.support.processes import RedisServer, redis_servers, wait_until
from tests.support.runner import ProxyThread, proxy_for
from tests.support.wire import RespConn, encode, exchange

LIB = (
    "#!lua name=%s\n"
    "redis.register_function('%s', function(keys, args) return redis.call('GET', keys[1]) end)"
)


@pytest.fixture(scope="module")
def proxy(backends3: list[RedisServer]) -> Iterator[ProxyThread]:
    with proxy_for([b.addr for b in backends3]) as p:
        yield p


@pytest.fixture(autouse=True)
def _clean(backends3: list[RedisServer], reference: RedisServer) -> None:
    for s in [*backends3, reference]:
        c = s.client()
        c.flushall()
        c.function_flush()
        c.config_set("maxmemory", 0)
        c.config_set("zset-max-listpack-entries", 128)


def raw(port: int, *args: str) -> bytes:
    with RespConn(port) as conn:
        return conn.call(*args)[0]


@pytest.mark.parametrize(
    "args",
    [
        ("CLIENT", "SETINFO", "lib-name", "x"),
        ("CLIENT", "LIST", "TYPE", "foo"),
        ("CLIENT", "LIST", "ID", "x"),
        ("CLIENT", "LIST", "foo"),
        ("CLIENT", "KILL", "ID", "0"),
        ("CLIENT", "KILL", "ID", "x"),
        ("CLIENT", "KILL", "TYPE", "Foo"),
        ("CLIENT", "KILL", "SKIPME", "maybe"),
        ("CLIENT", "KILL", "foo", "bar"),
        ("CLIENT", "KILL", "ID"),
        ("CLIENT", "KILL", "ADDR", "1.1.1.1:1", "LADDR", "x"),
        ("CLIENT", "KILL", "1.2.3.4:5"),
        ("CLIENT", "KILL", "ID", "1", "TYPE"),
        ("CLIENT", "UNBLOCK", "x"),
        ("CLIENT", "UNBLOCK", "5", "foo"),
        ("CLIENT", "UNBLOCK", "999999"),
        ("CONFIG", "GET"),
        ("RANDOMKEY",),
        ("FUNCTION", "DELETE", "nolib"),
        ("FUNCTION", "LOAD", "not lua"),
        ("FUNCTION", "LIST"),
    ],
)
def test_replies_as_redis(
    proxy: ProxyThread, reference: RedisServer, args: tuple[str, ...]
) -> None:
    assert raw(proxy.port, *args) == raw(reference.port, *args)


def test_client_list_shows_the_proxys_clients(proxy: ProxyThread, reference: RedisServer) -> None:
    a, b = redis.Redis(port=proxy.port, protocol=2), redis.Redis(port=proxy.port, protocol=2)
    a.client_setname("alpha")
    b.client_setname("beta")
    b_id = b.client_id()
    rows = {c["name"]: c for c in a.client_list()}
    assert {"alpha", "beta"} <= set(rows)
    assert int(rows["beta"]["id"]) == b_id
    ref = redis.Redis(port=reference.port, protocol=2).client_list()[0]
    assert list(rows["alpha"]) == list(ref)  # Redis 7.0.15's fields, in its order
    assert [c["name"] for c in a.client_list(client_id=[b_id])] == ["beta"]
    assert a.client_info()["name"] == "alpha"
    assert {c["name"] for c in a.client_list(_type="pubsub")} == set()


def test_client_kill_by_id_addr_and_skipme(proxy: ProxyThread) -> None:
    killer = redis.Redis(port=proxy.port, protocol=2)
    with RespConn(proxy.port) as victim, RespConn(proxy.port) as other, RespConn(proxy.port) as me:
        victim_id = victim.call("CLIENT", "ID")[1]
        assert killer.execute_command("CLIENT", "KILL", "ID", victim_id) == 1
        with pytest.raises((ConnectionError, OSError)):
            victim.call("PING")
        info = other.call("CLIENT", "INFO")[1]
        assert isinstance(info, bytes)
        addr = info.split()[1].split(b"=")[1]
        assert killer.execute_command("CLIENT", "KILL", addr) == b"OK"
        with pytest.raises((ConnectionError, OSError)):
            other.call("PING")
        my_id = me.call("CLIENT", "ID")[1]
        assert me.call("CLIENT", "KILL", "ID", my_id)[1] == 0  # SKIPME yes by default
        assert me.call("CLIENT", "KILL", "ID", my_id, "SKIPME", "no")[1] == 1  # then closed
        with pytest.raises((ConnectionError, OSError)):
            me.call("PING")
    assert killer.ping()


def test_randomkey_comes_from_every_backend(
    proxy: ProxyThread, backends3: list[RedisServer]
) -> None:
    r = redis.Redis(port=proxy.port)
    assert r.randomkey() is None
    keys = [f"k{i}" for i in range(30)]
    r.mset({k: 1 for k in keys})
    owners = {k: next(s for s in backends3 if s.client().exists(k)) for k in keys}
    seen = {r.randomkey().decode() for _ in range(200)}
    assert seen <= set(keys)
    assert len({owners[k].port for k in seen}) == 3


def test_config_get_merged_without_secrets(
    proxy: ProxyThread, backends3: list[RedisServer]
) -> None:
    backends3[0].client().config_set("requirepass", "")
    r = redis.Redis(port=proxy.port)
    assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    got = r.config_get("*")
    assert "requirepass" not in got and "masterauth" not in got
    assert got["maxmemory"] == "0" and len(got) > 100
    assert redis.Redis(port=proxy.port, protocol=2).config_get("maxmemory") == {"maxmemory": "0"}
    with pytest.raises(redis.ResponseError):
        r.config_set("maxmemory", 5)


def test_info_memory_and_stats_are_summed(proxy: ProxyThread, backends3: list[RedisServer]) -> None:
    for i, s in enumerate(backends3):
        s.client().config_set("maxmemory", (i + 1) << 20)
        for _ in range(i + 2):
            s.client().get("absent")
    r = redis.Redis(port=proxy.port)
    memory = r.info("memory")
    assert memory["maxmemory"] == 6 << 20
    assert memory["maxmemory_human"] == "6.00M"
    assert memory["maxmemory_policy"] == "noeviction"
    stats = r.info("stats")
    assert stats["keyspace_misses"] == sum(
        s.client().info("stats")["keyspace_misses"] for s in backends3
    )
    everything = r.info()
    assert (
        "used_memory" in everything
        and "keyspace_hits" in everything
        and "redis_version" in everything
    )
    assert "used_memory" not in r.info("server")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _names(libraries: list[Any]) -> list[str]:
    """Library names from FUNCTION LIST, RESP2 (flat pairs) or RESP3 (maps)."""
    out = []
    for lib in libraries:
        fields = lib if isinstance(lib, dict) else dict(zip(lib[::2], lib[1::2], strict=True))
        out.append(_text(fields.get("library_name", fields.get(b"library_name"))))
    return out


def _libraries(server: RedisServer) -> set[str]:
    return set(_names(server.client().function_list()))


def test_function_load_everywhere_and_fcall_on_every_backend(
    proxy: ProxyThread, backends3: list[RedisServer]
) -> None:
    r = redis.Redis(port=proxy.port)
    assert r.function_load(LIB % ("mylib", "myget")) == b"mylib"
    assert all(_libraries(s) == {"mylib"} for s in backends3)
    keys = [f"f{i}" for i in range(20)]
    r.mset({k: k for k in keys})
    assert [r.fcall("myget", 1, k) for k in keys] == [k.encode() for k in keys]
    assert _names(r.function_list()) == ["mylib"]
    dump = r.function_dump()
    assert r.function_delete("mylib")
    assert all(_libraries(s) == set() for s in backends3)
    assert r.function_restore(dump)
    assert all(_libraries(s) == {"mylib"} for s in backends3)


def test_function_load_is_all_or_nothing(proxy: ProxyThread, backends3: list[RedisServer]) -> None:
    backends3[2].client().function_load(LIB % ("clash", "f1"))  # a backend that diverged
    r = redis.Redis(port=proxy.port)
    with pytest.raises(redis.ResponseError, match="already exists"):
        r.function_load(LIB % ("clash", "f2"))
    assert _libraries(backends3[0]) == _libraries(backends3[1]) == set()
    assert _libraries(backends3[2]) == {"clash"}
    assert _names(r.function_list()) == ["clash"]  # merged by name
    with pytest.raises(redis.ResponseError, match="not found"):
        r.function_delete("clash")  # not on backends 0 and 1: nothing deleted
    assert _libraries(backends3[2]) == {"clash"}


def test_function_load_with_a_backend_down_changes_nothing(backends3: list[RedisServer]) -> None:
    with redis_servers(1) as extra:
        addrs = [backends3[0].addr, extra[0].addr]
        with proxy_for(addrs) as p:
            r = redis.Redis(port=p.port)
            assert r.ping()
            extra[0].stop()
            wait_until(lambda: _fails(r), 10, "the proxy sees the backend gone")
            with pytest.raises(redis.ResponseError):
                r.function_load(LIB % ("lone", "g"))
            assert _libraries(backends3[0]) == set()


def _fails(r: redis.Redis) -> bool:
    try:
        r.function_load(LIB % ("probe", "p"))
    except redis.ResponseError:
        return True
    r.function_delete("probe")
    return False


REPLY_SCRIPTS = {
    "off_on": [["CLIENT", "REPLY", "OFF"], ["SET", "a", "1"], ["GET", "a"], ["MGET", "a", "b"],
               ["CLIENT", "REPLY", "ON"], ["GET", "a"]],
    "skip": [["CLIENT", "REPLY", "SKIP"], ["GET", "a"], ["GET", "a"], ["CLIENT", "REPLY", "SKIP"],
             ["CLIENT", "REPLY", "SKIP"], ["PING"], ["PING", "x"]],
    "skip_then_on": [["CLIENT", "REPLY", "SKIP"], ["CLIENT", "REPLY", "ON"], ["PING"]],
    "off_errors": [["CLIENT", "REPLY", "OFF"], ["NOSUCH"], ["GET"], ["CLIENT", "REPLY", "MAYBE"],
                   ["CLIENT", "REPLY", "ON"], ["CLIENT", "REPLY", "MAYBE"]],
    "off_fanout": [["CLIENT", "REPLY", "OFF"], ["DBSIZE"], ["INFO"], ["MSET", "x", "1", "y", "2"],
                   ["CLIENT", "REPLY", "ON"], ["MGET", "x", "y"]],
}  # fmt: skip


@pytest.mark.parametrize("script", sorted(REPLY_SCRIPTS))
def test_client_reply_as_redis(proxy: ProxyThread, reference: RedisServer, script: str) -> None:
    payload = b"".join(encode(c) for c in [*REPLY_SCRIPTS[script], ["QUIT"]])
    assert exchange(proxy.port, payload) == exchange(reference.port, payload)


def _config(server: RedisServer, name: str) -> str:
    return str(server.client().config_get(name)[name])


def test_config_set_only_what_the_operator_allows_all_or_nothing(
    backends3: list[RedisServer],
) -> None:
    extra = 'allow_config_set: ["notify-keyspace-events", "list-*"]\n'
    with proxy_for([b.addr for b in backends3], extra) as p:
        r = redis.Redis(port=p.port)
        assert r.config_set("notify-keyspace-events", "KEA")
        assert {_config(s, "notify-keyspace-events") for s in backends3} == {"AKE"}
        with pytest.raises(redis.ResponseError, match="allow_config_set"):
            r.config_set("maxmemory", "1mb")
        assert {_config(s, "maxmemory") for s in backends3} == {"0"}
        backends3[2].client().acl_setuser("default", enabled=True, commands=["-config|set"])
        try:
            with pytest.raises(redis.ResponseError, match="no permissions"):
                r.config_set("list-max-listpack-size", "7")
            # backends 0 and 1 took it, then got their old value back
            assert {_config(s, "list-max-listpack-size") for s in backends3} == {"-2"}
        finally:
            backends3[2].client().acl_setuser("default", enabled=True, commands=["+@all"])
        r.config_set("notify-keyspace-events", "")
    refused = pytest.raises(redis.ResponseError, match="not allowed")
    with proxy_for([b.addr for b in backends3]) as p, refused:  # the default: refused
        redis.Redis(port=p.port).config_set("notify-keyspace-events", "KEA")


@pytest.mark.parametrize(("how", "reply"), [("TIMEOUT", b"*-1\r\n"), ("ERROR", b"-UNBLOCKED")])
def test_client_unblock_ends_a_blocking_call(proxy: ProxyThread, how: str, reply: bytes) -> None:
    r = redis.Redis(port=proxy.port)
    with RespConn(proxy.port) as blocked:
        blocked_id = blocked.call("CLIENT", "ID")[1]
        assert r.execute_command("CLIENT", "UNBLOCK", blocked_id) == 0  # not blocked yet
        blocked.send(encode(["BLPOP", "unblock:list", "0"]))
        wait_until(lambda: r.info("clients")["blocked_clients"] == 1, 5, "the client blocks")
        # 0 until the backend told the proxy its blocking connection's id
        unblock = ("CLIENT", "UNBLOCK", blocked_id, how)
        wait_until(lambda: r.execute_command(*unblock) == 1, 5, "CLIENT UNBLOCK took")
        raw_reply = blocked.read_reply()[0]
        assert raw_reply.startswith(reply)
        assert blocked.call("PING")[1] == ("+", b"PONG")
    assert r.info("clients")["blocked_clients"] == 0


def test_changes_everywhere_keep_the_clients_order(backends3: list[RedisServer]) -> None:
    """FUNCTION LOAD then FCALL, CONFIG SET then CONFIG GET, pipelined in one write: the later
    requests wait for the change, as after any command in Redis."""
    extra = 'allow_config_set: ["zset-*"]\n'
    with proxy_for([b.addr for b in backends3], extra) as p:
        redis.Redis(port=p.port).mset({f"o{i}": i for i in range(10)})
        calls = [["FUNCTION", "LOAD", LIB % ("ordered", "oget")]]
        calls += [["FCALL", "oget", "1", f"o{i}"] for i in range(10)]
        calls += [["CONFIG", "SET", "zset-max-listpack-entries", "5"]]
        calls += [["CONFIG", "GET", "zset-max-listpack-entries"]]
        payload = b"".join(encode(c) for c in [*calls, ["QUIT"]])
        got, closed = exchange(p.port, payload)
        want = b"$7\r\nordered\r\n" + b"".join(b"$1\r\n%d\r\n" % i for i in range(10))
        want += b"+OK\r\n*2\r\n$25\r\nzset-max-listpack-entries\r\n$1\r\n5\r\n+OK\r\n"
        assert (got, closed) == (want, True)
