"""Databases (SELECT n) through the proxy, against real Redis.

Each client's db picks the backend connections its requests use (net/backend.py lanes): its
keys land in that db of their backend, whatever path the request takes (fast path, fan-out,
blocking, transaction, WATCH); SELECT's errors are Redis's own, byte for byte.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from proxy.server.dbcheck import DatabasesError
from tests.support.processes import RedisServer, free_port, redis_servers, wait_until
from tests.support.runner import ProxyThread, running_proxy, simple_config
from tests.support.wire import RespConn, encode


@pytest.fixture(scope="module")
def servers() -> Iterator[list[RedisServer]]:
    with redis_servers(3) as found:
        yield found


@pytest.fixture(scope="module")
def proxy(servers: list[RedisServer]) -> Iterator[ProxyThread]:
    text = simple_config([s.addr for s in servers], free_port(), free_port())
    with running_proxy(text) as p:
        yield p


@pytest.fixture(autouse=True)
def flushed(servers: list[RedisServer]) -> None:
    for s in servers:
        s.client().flushall()


def owner(proxy: ProxyThread, servers: list[RedisServer], key: str) -> RedisServer:
    assert proxy.server is not None
    addr = proxy.server.routes.backend_for(key.encode()).addr
    return next(s for s in servers if s.addr == addr)


def in_db(server: RedisServer, db: int) -> redis.Redis:
    return redis.Redis(port=server.port, db=db, protocol=2)


SELECTS = [
    ["SELECT", "0"],
    ["SELECT", "15"],
    ["SELECT", "16"],
    ["SELECT", "-1"],
    ["SELECT", "abc"],
    ["SELECT", "1.5"],
    ["SELECT", " 1"],
    ["SELECT", "+1"],
    ["SELECT", "01"],
    ["SELECT", "-0"],
    ["SELECT", ""],
    ["SELECT", "2147483647"],
    ["SELECT", "2147483648"],
    ["SELECT", "-2147483649"],
    ["SELECT", "9223372036854775807"],
    ["SELECT", "9223372036854775808"],
    ["SELECT", "-9223372036854775808"],
    ["SELECT", "99999999999999999999"],
    ["SELECT"],
    ["SELECT", "1", "2"],
    ["MOVE", "k", "16"],
    ["MOVE", "k", "x"],
    ["MOVE", "k", "-1"],
    ["MOVE", "k", "4294967296"],
    ["MOVE", "k", "0"],
]


def test_select_and_move_answer_as_redis_byte_for_byte(
    proxy: ProxyThread, servers: list[RedisServer]
) -> None:
    """The proxy's default `databases: 16` is Redis's default: the same answers to SELECT n and
    MOVE k n, valid or not (MOVE k 0 from db 0: Redis's own "same object" error)."""
    backend = owner(proxy, servers, "k")
    with RespConn(proxy.port) as mine, RespConn(backend.port) as theirs:
        for conn in (mine, theirs):
            conn.call("SET", "k", "v")
        for command in SELECTS:
            assert mine.call(*command)[0] == theirs.call(*command)[0], command
            mine.call("SELECT", "0")
            theirs.call("SELECT", "0")


def test_two_clients_in_two_dbs_keep_their_own_values(
    proxy: ProxyThread, servers: list[RedisServer]
) -> None:
    zero = redis.Redis(port=proxy.port, protocol=2)
    one = redis.Redis(port=proxy.port, db=1, protocol=2)
    names = [f"user:{i}" for i in range(60)]
    for name in names:
        zero.set(name, "zero")
        one.set(name, "one")
    assert zero.mget(names) == [b"zero"] * 60
    assert one.mget(names) == [b"one"] * 60
    for name in names:  # on the key's backend, each in its db; nowhere else
        home = owner(proxy, servers, name)
        assert in_db(home, 0).get(name) == b"zero"
        assert in_db(home, 1).get(name) == b"one"
        for other in servers:
            if other is not home:
                assert not in_db(other, 0).exists(name) and not in_db(other, 1).exists(name)
    assert zero.dbsize() == one.dbsize() == 60
    assert sum(in_db(s, 2).dbsize() for s in servers) == 0


def test_pipelined_select_then_commands(proxy: ProxyThread, servers: list[RedisServer]) -> None:
    commands = [
        ["SELECT", "1"],
        ["SET", "a", "in1"],
        ["GET", "a"],
        ["SELECT", "0"],
        ["GET", "a"],
        ["SET", "a", "in0"],
        ["SELECT", "7"],
        ["MSET", "a", "in7", "b", "b7"],
        ["SELECT", "1"],
        ["MGET", "a", "b"],
        ["SELECT", "99"],
        ["GET", "a"],
    ]
    with RespConn(proxy.port) as conn:
        conn.send(b"".join(encode(c) for c in commands))
        replies = [conn.read_reply()[0] for _ in commands]
    assert replies == [
        b"+OK\r\n",
        b"+OK\r\n",
        b"$3\r\nin1\r\n",
        b"+OK\r\n",
        b"$-1\r\n",
        b"+OK\r\n",
        b"+OK\r\n",
        b"+OK\r\n",
        b"+OK\r\n",
        b"*2\r\n$3\r\nin1\r\n$-1\r\n",
        b"-ERR DB index is out of range\r\n",
        b"$3\r\nin1\r\n",  # a refused SELECT leaves the db as it was
    ]
    home = owner(proxy, servers, "a")
    assert [in_db(home, db).get("a") for db in (0, 1, 7)] == [b"in0", b"in1", b"in7"]


def test_a_blocking_pop_in_db_2_waits_for_db_2(
    proxy: ProxyThread, servers: list[RedisServer]
) -> None:
    got: list[object] = []
    waiter = redis.Redis(port=proxy.port, db=2, protocol=2)
    pusher0 = redis.Redis(port=proxy.port, protocol=2)
    pusher2 = redis.Redis(port=proxy.port, db=2, protocol=2)
    thread = threading.Thread(target=lambda: got.append(waiter.blpop(["jobs"], timeout=10)))
    thread.start()
    home = owner(proxy, servers, "jobs")
    wait_until(lambda: in_db(home, 0).info("clients")["blocked_clients"] == 1, what="blocked")
    pusher0.rpush("jobs", "for-db-0")  # another db's list: the pop keeps waiting
    pusher2.rpush("jobs", "for-db-2")
    thread.join(10)
    assert got == [(b"jobs", b"for-db-2")]
    assert in_db(home, 0).lrange("jobs", 0, -1) == [b"for-db-0"]
    assert not in_db(home, 2).exists("jobs")


def test_a_transaction_runs_in_db_3(proxy: ProxyThread, servers: list[RedisServer]) -> None:
    client = redis.Redis(port=proxy.port, db=3, protocol=2)
    with client.pipeline(transaction=True) as tx:
        tx.set("{t}a", "1").incr("{t}n").lpush("{t}l", "x")
        assert tx.execute() == [True, 1, 1]
    home = owner(proxy, servers, "{t}a")
    assert in_db(home, 3).mget("{t}a", "{t}n") == [b"1", b"1"]
    assert in_db(home, 0).dbsize() == 0
    with client.pipeline(transaction=True) as tx:  # WATCH pins a connection in db 3 too
        tx.watch("{t}n")
        assert tx.get("{t}n") == b"1"
        tx.multi()
        tx.incr("{t}n")
        assert tx.execute() == [2]
    assert in_db(home, 3).get("{t}n") == b"2"


def test_select_inside_multi_and_while_watching_is_refused(proxy: ProxyThread) -> None:
    with RespConn(proxy.port) as conn:
        assert conn.call("MULTI")[0] == b"+OK\r\n"
        assert b"cannot be part of a transaction" in conn.call("SELECT", "1")[0]
        assert conn.call("EXEC")[0].startswith(b"-EXECABORT")
        assert conn.call("WATCH", "w")[0] == b"+OK\r\n"
        assert b"SELECT while WATCHing" in conn.call("SELECT", "1")[0]
        assert conn.call("UNWATCH")[0] == b"+OK\r\n"
        assert conn.call("SELECT", "1")[0] == b"+OK\r\n"
        assert conn.call("SET", "w", "1")[0] == b"+OK\r\n"
        assert conn.call("CLIENT", "INFO")[1].split(b" db=")[1][:2] == b"1 "  # type: ignore[union-attr]


def test_scan_dbsize_keys_and_flushdb_are_per_db(
    proxy: ProxyThread, servers: list[RedisServer]
) -> None:
    zero = redis.Redis(port=proxy.port, protocol=2)
    four = redis.Redis(port=proxy.port, db=4, protocol=2)
    zero.mset({f"z{i}": i for i in range(30)})
    four.mset({f"f{i}": i for i in range(20)})
    assert zero.dbsize() == 30 and four.dbsize() == 20
    assert sorted(four.scan_iter(count=7)) == sorted(f"f{i}".encode() for i in range(20))
    assert len(zero.keys("*")) == 30 and four.keys("z*") == []
    info = zero.info("keyspace")
    assert info["db0"]["keys"] == 30 and info["db4"]["keys"] == 20
    with RespConn(proxy.port) as conn:  # FLUSHDB is refused without allow_flush
        assert conn.call("SELECT", "4")[0] == b"+OK\r\n"
        assert b"allow_flush" in conn.call("FLUSHDB")[0]
    assert sum(in_db(s, 4).dbsize() for s in servers) == 20


def test_move_swapdb_reset_and_hello(proxy: ProxyThread, servers: list[RedisServer]) -> None:
    with RespConn(proxy.port) as conn:
        conn.call("SET", "m", "v")
        assert conn.call("MOVE", "m", "9")[0] == b":1\r\n"
        assert conn.call("EXISTS", "m")[0] == b":0\r\n"
        assert b"SWAPDB" in conn.call("SWAPDB", "0", "9")[0]
        assert conn.call("SELECT", "9")[0] == b"+OK\r\n"
        assert conn.call("HELLO", "3")[0].startswith(b"%")  # RESP3 in db 9: its own lane
        assert conn.call("GET", "m")[0] == b"$1\r\nv\r\n"
        assert conn.call("HSET", "h", "f", "1")[0] == b":1\r\n"
        assert conn.call("HGETALL", "h")[0] == b"%1\r\n$1\r\nf\r\n$1\r\n1\r\n"
        assert conn.call("RESET")[0] == b"+RESET\r\n"
        assert conn.call("GET", "m")[0] == b"$-1\r\n"  # back in db 0, as Redis
        assert b" db=0 " in conn.call("CLIENT", "INFO")[0]
    home = owner(proxy, servers, "m")
    assert in_db(home, 9).get("m") == b"v" and not in_db(home, 0).exists("m")
    assert in_db(owner(proxy, servers, "h"), 9).hgetall("h") == {b"f": b"1"}


def test_a_smaller_databases_setting_bounds_select(servers: list[RedisServer]) -> None:
    text = simple_config([s.addr for s in servers], free_port(), free_port(), "databases: 4\n")
    with running_proxy(text) as p, RespConn(p.port) as conn:
        assert conn.call("SELECT", "3")[0] == b"+OK\r\n"
        assert conn.call("SELECT", "4")[0] == b"-ERR DB index is out of range\r\n"
        assert conn.call("MOVE", "k", "4")[0] == b"-ERR DB index is out of range\r\n"


def test_backends_with_fewer_databases_stop_the_start(servers: list[RedisServer]) -> None:
    text = simple_config([s.addr for s in servers], free_port(), free_port(), "databases: 32\n")
    refused = ProxyThread(text)
    with pytest.raises(DatabasesError, match=r"databases: 32 in the config, but .* has 16"):
        refused.start()
    refused.stop()
    with redis_servers(1, "--databases", "32") as big:
        text = simple_config([big[0].addr], free_port(), free_port(), "databases: 32\n")
        with running_proxy(text) as p:
            c = redis.Redis(port=p.port, db=31, protocol=2)
            c.set("k", "v")
            assert in_db(big[0], 31).get("k") == b"v"


NODE_DIR = Path(__file__).resolve().parents[1] / ".node"  # gitignored
IOREDIS_SCRIPT = """
const Redis = require("ioredis");
const [port, name] = process.argv.slice(2);
(async () => {
  const one = new Redis({ port: Number(port), db: 1, lazyConnect: true });
  const zero = new Redis({ port: Number(port), lazyConnect: true });
  await one.connect();
  await zero.connect();
  await one.set(name, "from-db-1");
  await zero.set(name, "from-db-0");
  const seen = [await one.get(name), await zero.get(name), await one.dbsize()];
  one.disconnect();
  zero.disconnect();
  console.log(JSON.stringify(seen));
})().catch((e) => { console.error(String(e)); process.exit(1); });
"""


def ioredis() -> Path:
    """node_modules with ioredis 5 in tests/.node (installed once), or skip without node/npm."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the ioredis test")
    if not (NODE_DIR / "node_modules" / "ioredis").is_dir():
        NODE_DIR.mkdir(exist_ok=True)
        done = subprocess.run(
            [npm, "install", "--prefix", str(NODE_DIR), "ioredis@5", "--no-audit", "--no-fund"],
            capture_output=True,
            timeout=180,
        )
        if done.returncode != 0:
            pytest.skip(f"npm install ioredis@5 failed: {done.stderr[-300:]!r}")
    return NODE_DIR


def test_ioredis_with_db_1_writes_to_db_1(proxy: ProxyThread, servers: list[RedisServer]) -> None:
    """ioredis sends SELECT 1 on connect (issue 14: it ignored the refusal, and its writes landed
    in db 0, mixed with another application's)."""
    where = ioredis()
    script = where / "db1.js"
    script.write_text(IOREDIS_SCRIPT)
    done = subprocess.run(
        ["node", str(script), str(proxy.port), "io:key"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=where,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["from-db-1", "from-db-0", 1]
    home = owner(proxy, servers, "io:key")
    assert in_db(home, 1).get("io:key") == b"from-db-1"
    assert in_db(home, 0).get("io:key") == b"from-db-0"


def test_a_backend_that_may_not_say_is_trusted_and_a_db_it_lacks_fails_alone() -> None:
    """The backend user may not CONFIG GET: the start goes on; the backend has 2 dbs where the
    config says 4: db 3's requests fail naming the backend, and none of them runs in db 0 (its
    connection sends them only once SELECT 3 succeeded)."""
    with redis_servers(1, "--databases", "2") as (server,):
        server.client().acl_setuser(
            "proxy", enabled=True, passwords=["+pw"], keys="*", channels="*",
            commands=["+@all", "-config"],
        )  # fmt: skip
        text = simple_config([server.addr], free_port(), free_port(), "databases: 4\n")
        text = text.replace("backend:\n", "backend:\n  username: proxy\n  password: pw\n")
        with running_proxy(text) as p:
            three = redis.Redis(port=p.port, db=3, protocol=2)
            with pytest.raises(redis.ResponseError, match="handshake refused: ERR DB index"):
                three.set("k", "lost")
            one = redis.Redis(port=p.port, db=1, protocol=2)
            assert one.set("k", "kept") and one.get("k") == b"kept"
            assert p.server is not None and p.server.routes.route_backends[0].up
        assert in_db(server, 1).get("k") == b"kept"
        assert not in_db(server, 0).exists("k")


def test_flushdb_empties_the_clients_db_and_pubsub_is_global(servers: list[RedisServer]) -> None:
    text = simple_config([s.addr for s in servers], free_port(), free_port(), "allow_flush: true\n")
    with running_proxy(text) as p:
        zero = redis.Redis(port=p.port, protocol=2)
        six = redis.Redis(port=p.port, db=6, protocol=2)
        zero.mset({f"a{i}": 1 for i in range(20)})
        six.mset({f"a{i}": 6 for i in range(20)})
        assert six.flushdb()
        assert six.dbsize() == 0 and zero.dbsize() == 20
        assert sum(in_db(s, 0).dbsize() for s in servers) == 20
        listener = zero.pubsub()
        listener.subscribe("news")
        assert listener.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
        assert six.publish("news", "from db 6") == 1  # channels are global, as in Redis
        message = listener.get_message(timeout=5)
        assert message is not None and message["data"] == b"from db 6"
        listener.close()
