"""Client ACL users (client.users) against a real redis-server 7.0 given the same user by ACL
SETUSER: the proxy's replies to the same commands must be Redis's, byte for byte (AUTH user pass,
HELLO 3 AUTH, NOPERM for commands and keys, WRONGPASS, ACL WHOAMI, a transaction with a denied
command); a reload changes the rules of connected clients and closes those whose user is gone;
client.allow_cidrs refuses a peer at accept (127.0.0.2 as a second loopback source address).
"""

from __future__ import annotations

import hashlib
import json
import socket
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis

from tests.support.processes import RedisServer, free_port, redis_servers
from tests.support.runner import ProxyThread, running_proxy, simple_config
from tests.support.wire import RespConn, read_until_closed

# The same users on both sides: Redis's ACL SETUSER rules, and the proxy's client.users.
APP_RULES = "-@all +@read +set -@dangerous +acl|whoami"
TX_RULES = "+@all -del -@dangerous"
RO_RULES = "-@all +@read +auth"  # every key: the client's fast path, for the commands it may run
USERS = f"""client:
  password: dpw
  users:
    - {{name: app, password: apw, commands: "{APP_RULES}", keys: ["~app:*", "~exact"]}}
    - {{name: tx, password_sha256: {hashlib.sha256(b"tpw").hexdigest()}, commands: "{TX_RULES}",
       keys: "~{{tx}}*"}}
    - {{name: all, password: xpw, commands: "+@all", keys: allkeys}}
    - {{name: ro, password: rpw, commands: "{RO_RULES}", keys: "~*"}}
"""


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with redis_servers(1) as servers:
        (s,) = servers
        r = redis.Redis(port=s.port)
        r.execute_command("ACL", "SETUSER", "app", "on", ">apw", "~app:*", "~exact", "&*",
                          *APP_RULES.split())  # fmt: skip
        r.execute_command("ACL", "SETUSER", "tx", "on", ">tpw", "~{tx}*", "&*", *TX_RULES.split())
        r.execute_command("ACL", "SETUSER", "all", "on", ">xpw", "~*", "&*", "+@all")
        r.execute_command("ACL", "SETUSER", "ro", "on", ">rpw", "~*", "&*", *RO_RULES.split())
        r.execute_command("CONFIG", "SET", "requirepass", "dpw")  # default user: client.password
        r.close()
        yield s


@pytest.fixture
def proxy(server: RedisServer, tmp_path: Path) -> Iterator[ProxyThread]:
    text = simple_config([server.addr], 0, free_port(), USERS)
    text = text.replace("backend:\n", "backend:\n  password: dpw\n")
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    with running_proxy(text, str(path)) as p:
        yield p


def replies(port: int, commands: Sequence[Sequence[str]]) -> list[bytes]:
    with RespConn(port) as conn:
        return [conn.call(*c)[0] for c in commands]


def same_as_redis(server: RedisServer, proxy: ProxyThread, commands: list[list[str]]) -> None:
    assert replies(proxy.port, commands) == replies(server.port, commands)


def test_auth_user_pass_and_noperm_texts_are_redis_own(
    server: RedisServer, proxy: ProxyThread
) -> None:
    commands = [
        ["GET", "app:1"],  # NOAUTH first
        ["AUTH", "app", "wrong"],
        ["AUTH", "nobody", "apw"],
        ["AUTH", "app", "apw"],
        ["ACL", "WHOAMI"],
        ["GET", "other"],
        ["GET", "app:1"],
        ["SET", "app:1", "v"],
        ["GET", "exact"],
        ["GET", "exact2"],
        ["DEL", "app:1"],
        ["CLIENT", "SETNAME", "x"],
        ["MGET", "app:1", "other"],
        ["MGET", "app:1", "exact"],
        ["PING"],
        ["KEYS", "*"],
        ["EVAL", "return 1", "1", "app:1"],
        ["MULTI"],
        ["AUTH", "wrong-for-default"],
        ["ACL", "WHOAMI"],  # a failed AUTH keeps the user
        ["AUTH", "dpw"],
        ["ACL", "WHOAMI"],
        ["DEL", "app:1"],
    ]
    same_as_redis(server, proxy, commands)


def test_hello_3_auth_user_pass(server: RedisServer, proxy: ProxyThread) -> None:
    for port in (proxy.port, server.port):
        with RespConn(port) as conn:
            raw, _ = conn.call("HELLO", "3", "AUTH", "app", "wrong")
            assert raw == b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
            raw, _ = conn.call("HELLO", "3", "AUTH", "app", "apw")
            assert raw.startswith(b"%7\r\n") and b"proto\r\n:3\r\n" in raw
            assert conn.call("ACL", "WHOAMI")[0] == b"$3\r\napp\r\n"
            assert conn.call("GET", "other")[0] == (
                b"-NOPERM this user has no permissions to access one of the keys used as"
                b" arguments\r\n"
            )
            assert conn.call("SET", "app:h", "v")[0] == b"+OK\r\n"
            assert conn.call("GET", "app:h")[0] == b"$1\r\nv\r\n"


def test_transaction_with_a_denied_command_aborts(server: RedisServer, proxy: ProxyThread) -> None:
    commands = [
        ["AUTH", "tx", "tpw"],
        ["MULTI"],
        ["SET", "{tx}a", "1"],
        ["DEL", "{tx}a"],
        ["SET", "other", "1"],
        ["EXEC"],
        ["MULTI"],
        ["SET", "{tx}a", "2"],
        ["GET", "{tx}a"],
        ["EXEC"],
        ["WATCH", "{tx}a"],
        ["DEL", "{tx}a"],
        ["GET", "other"],
        ["UNWATCH"],
    ]
    same_as_redis(server, proxy, commands)


def test_a_user_with_every_key_is_checked_on_the_fast_path(
    server: RedisServer, proxy: ProxyThread
) -> None:
    """GET and SET are single-key commands the proxy sends straight to their backend: what the
    client learnt of them as one user must not hold once it is another."""
    commands = [
        ["AUTH", "all", "xpw"],
        ["SET", "k", "1"],
        ["GET", "k"],
        ["AUTH", "ro", "rpw"],
        ["GET", "k"],
        ["SET", "k", "2"],
        ["INCR", "k"],
        ["MGET", "k", "other"],
        ["DEL", "k"],
        ["AUTH", "all", "xpw"],
        ["SET", "k", "3"],
        ["GET", "k"],
        ["DEL", "k"],
    ]
    same_as_redis(server, proxy, commands)
    for port in (proxy.port, server.port):  # pipelined: AUTH changes the rules mid-read
        with RespConn(port) as conn:
            conn.send(b"AUTH all xpw\r\nSET p 1\r\nAUTH ro rpw\r\nSET p 2\r\nGET p\r\n")
            got = [conn.read_reply()[0] for _ in range(5)]
            assert got[3] == b"-NOPERM this user has no permissions to run the 'set' command\r\n"
            assert got[4] == b"$1\r\n1\r\n"


def test_a_big_value_is_not_streamed_past_the_rules(proxy: ProxyThread) -> None:
    """Values of 1 MiB and more are streamed to the backend as they arrive (net/stream.py):
    never for a user who may not run the command."""
    big = b"x" * (2 << 20)
    with RespConn(proxy.port) as conn:
        assert conn.call("AUTH", "ro", "rpw")[0] == b"+OK\r\n"
        assert conn.call("SET", "big", big)[0] == (
            b"-NOPERM this user has no permissions to run the 'set' command\r\n"
        )
        assert conn.call("EXISTS", "big")[0] == b":0\r\n"
        assert conn.call("AUTH", "all", "xpw")[0] == b"+OK\r\n"
        assert conn.call("SET", "big", big)[0] == b"+OK\r\n"
        assert conn.call("STRLEN", "big")[0] == b":%d\r\n" % len(big)
        assert conn.call("DEL", "big")[0] == b":1\r\n"


def test_redis_py_with_username(proxy: ProxyThread) -> None:
    r = redis.Redis(port=proxy.port, username="app", password="apw", protocol=3)
    try:
        assert r.set("app:py", "1")
        assert r.get("app:py") == b"1"
        assert r.acl_whoami() == b"app"
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.get("elsewhere")
    finally:
        r.close()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=proxy.port, username="app", password="nope").ping()


def test_a_user_allowed_everything_is_served(proxy: ProxyThread) -> None:
    r = redis.Redis(port=proxy.port, username="all", password="xpw")
    try:
        pipe = r.pipeline(transaction=False)
        for i in range(200):
            pipe.set(f"k{i}", i)
            pipe.get(f"k{i}")
        assert pipe.execute()[1::2] == [str(i).encode() for i in range(200)]
        assert r.delete("k1") == 1
    finally:
        r.close()


def reload(proxy: ProxyThread) -> dict[str, object]:
    assert proxy.server is not None
    ok, message = proxy.call(proxy.server.reload_from_file())
    return {"ok": ok, "message": message}


def test_reload_applies_new_rules_to_connected_clients(proxy: ProxyThread) -> None:
    assert proxy.path is not None
    with RespConn(proxy.port) as app, RespConn(proxy.port) as tx:
        assert app.call("AUTH", "app", "apw")[0] == b"+OK\r\n"
        assert tx.call("AUTH", "tx", "tpw")[0] == b"+OK\r\n"
        assert app.call("GET", "app:1")[0] == b"$-1\r\n"
        text = Path(proxy.path).read_text()
        text = text.replace(APP_RULES, "-@all +set").replace("    - {name: tx", "    - {name: tx2")
        Path(proxy.path).write_text(text)
        assert reload(proxy)["ok"]
        assert app.call("GET", "app:1")[0] == (
            b"-NOPERM this user has no permissions to run the 'get' command\r\n"
        )
        assert app.call("SET", "app:1", "v")[0] == b"+OK\r\n"
        assert read_until_closed(tx.sock)[1]  # its user is gone: closed, as Redis does


def test_a_reload_with_an_unknown_rule_is_refused(proxy: ProxyThread) -> None:
    assert proxy.path is not None
    Path(proxy.path).write_text(Path(proxy.path).read_text().replace("+acl|whoami", "+nosuch"))
    result = reload(proxy)
    assert not result["ok"]
    assert result["message"] == "client.users[0].commands: unknown command 'nosuch'"


# -- client.allow_cidrs ---------------------------------------------------------------------
def connect_from(source: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def metric(admin_port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def test_allow_cidrs_refuses_other_sources_at_accept(server: RedisServer, tmp_path: Path) -> None:
    admin = free_port()
    text = simple_config([server.addr], 0, admin, 'client: {allow_cidrs: ["127.0.0.1/32"]}\n')
    text = text.replace("backend:\n", "backend:\n  password: dpw\n")
    path = tmp_path / "p.yaml"
    path.write_text(text)
    proxy = ProxyThread(text, str(path)).start()
    refused = 'shardproxy_client_errors_total{kind="address"}'
    try:
        with connect_from("127.0.0.2", proxy.port) as sock:
            sock.sendall(b"PING\r\n")
            data, closed = read_until_closed(sock)
        assert closed
        assert data == (
            b"-ERR shardproxy does not accept clients from 127.0.0.2:%d (client.allow_cidrs)\r\n"
            % int(data.split(b":")[1].split(b" ")[0])
        )
        assert metric(admin, refused) == 1.0
        with connect_from("127.0.0.1", proxy.port) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(100) == b"+PONG\r\n"
        path.write_text(text.replace("127.0.0.1/32", "127.0.0.0/8"))
        assert reload(proxy)["ok"]
        with connect_from("127.0.0.2", proxy.port) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(100) == b"+PONG\r\n"
        assert metric(admin, refused) == 1.0
    finally:
        proxy.stop()


def test_status_never_shows_passwords(proxy: ProxyThread) -> None:
    assert proxy.server is not None
    admin = proxy.server._config.admin
    assert admin is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{admin.port}/status", timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["generation"] == 1
    assert "dpw" not in json.dumps(body) and "apw" not in json.dumps(body)


def test_client_info_and_list_name_the_user(proxy: ProxyThread) -> None:
    with RespConn(proxy.port) as conn:
        assert conn.call("AUTH", "all", "xpw")[0] == b"+OK\r\n"
        assert b" user=all " in conn.call("CLIENT", "INFO")[0]
        assert b" user=all " in conn.call("CLIENT", "LIST")[0]
        assert conn.call("AUTH", "dpw")[0] == b"+OK\r\n"
        assert b" user=default " in conn.call("CLIENT", "INFO")[0]
