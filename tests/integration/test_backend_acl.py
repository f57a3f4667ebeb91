"""Backends whose proxy user has the rules `shardproxy acl` prints: the proxy's traffic and
migration jobs work as that user, scripts cannot escape the deny list, and the start and reload
checks of backend.acl_check see a too-broad user (the default +@all) and warn or refuse."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from proxy.commands.acl import build_rules
from proxy.server.aclcheck import AclCheckError
from proxy.server.server import ProxyServer
from tests.support.processes import RedisServer, free_port, redis_command, redis_servers, wait_until
from tests.support.runner import ProxyThread, running_proxy, simple_config

USER, PASSWORD = "shardproxy", "acl-test-pw"
ACL_BACKEND = f"  username: {USER}\n  password: {PASSWORD}\n"
CLI = [sys.executable, "-m", "proxy"]


@pytest.fixture(scope="module")
def servers() -> Iterator[list[RedisServer]]:
    with redis_servers(3) as three:
        command = build_rules(allow_flush=False).setuser(USER, PASSWORD).split()
        for s in three:
            assert redis_command(s.port, *command) == b"OK"
        yield three


@pytest.fixture(autouse=True)
def _flush(servers: list[RedisServer]) -> None:
    for s in servers:
        s.client().flushall()


def config(servers: list[RedisServer], backend: str = ACL_BACKEND, mode: str = "warn") -> str:
    text = simple_config([s.addr for s in servers], free_port(), free_port())
    return text.replace("backend:\n", f"backend:\n{backend}  acl_check: {mode}\n")


def server_of(proxy: ProxyThread) -> ProxyServer:
    assert proxy.server is not None
    return proxy.server


def test_traffic_and_pipelines_work_as_the_acl_user(servers: list[RedisServer]) -> None:
    with running_proxy(config(servers, mode="refuse")) as proxy:
        c = redis.Redis(port=proxy.port, protocol=2)
        pipe = c.pipeline(transaction=False)
        for i in range(200):
            pipe.set(f"k{i}", i)
            pipe.hset(f"h{i}", "f", i)
        pipe.execute()
        assert c.mget([f"k{i}" for i in range(200)]) == [str(i).encode() for i in range(200)]
        assert c.dbsize() == 400
        assert len(list(c.scan_iter(count=50))) == 400
        assert len(c.keys("k*")) == 200
        assert c.eval("return redis.call('GET', KEYS[1])", 1, "k7") == b"7"
        sha = c.script_load("return ARGV[1]")
        assert c.evalsha(sha, 0, "x") == b"x"
        assert c.dump("k1") is not None
        assert c.info("keyspace") is not None
        assert c.delete("k1", "k2", "h3") == 3


ESCAPES = [
    "redis.call('FLUSHALL')",
    "redis.call('FLUSHDB')",
    "redis.call('MIGRATE', '127.0.0.1', '1', KEYS[1], '0', '100')",
    "redis.call('SWAPDB', '0', '1')",
    "redis.call('CONFIG', 'SET', 'maxmemory', '1')",
    "redis.call('DEBUG', 'SLEEP', '0')",
    "redis.call('SHUTDOWN', 'NOSAVE')",
]


@pytest.mark.parametrize("body", ESCAPES)
def test_a_script_cannot_escape_the_deny_list(servers: list[RedisServer], body: str) -> None:
    with running_proxy(config(servers)) as proxy:
        c = redis.Redis(port=proxy.port, protocol=2)
        c.set("k", "v")
        with pytest.raises(
            redis.ResponseError, match=r"can.t run this command|not allowed from script"
        ):
            c.eval(f"return {body}", 1, "k")
        assert c.get("k") == b"v"
        assert all(s.client().ping() for s in servers)


def test_backfill_and_verify_run_as_the_acl_user(
    servers: list[RedisServer], tmp_path: Path
) -> None:
    old = ", ".join(f"{s.addr}:1 r{i + 1}" for i, s in enumerate(servers[:2]))
    new = ", ".join(f"{s.addr}:1 r{i + 1}" for i, s in enumerate(servers))
    path = tmp_path / "proxy.yaml"
    path.write_text(
        f"backend:\n{ACL_BACKEND}  acl_check: refuse\n"
        f"pools:\n  old: {{servers: [{old}]}}\n  new: {{servers: [{new}]}}\n"
        "route: old\nmigration:\n  to: new\n  phase: backfill\n"
        "  backfill: {rate_keys_per_s: 1000000, big_key_bytes: 200}\n"
    )
    for i in range(60):
        target = servers[i % 2].client()
        target.set(f"s{i}", "x" * (i * 10), px=300_000 if i % 5 == 0 else None)
        target.rpush(f"l{i}", *range(i % 40 + 1))  # longer lists take the big-key path
        target.hset(f"h{i}", mapping={str(j): "v" * 20 for j in range(i % 20 + 1)})
    run = [*CLI, "backfill", "-c", str(path)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    run = [*CLI, "verify", "-c", str(path)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert servers[2].client().dbsize() > 0


def test_the_check_passes_for_the_acl_user(servers: list[RedisServer]) -> None:
    with running_proxy(config(servers)) as proxy:
        server = server_of(proxy)
        wait_until(lambda: len(server.acl_reports) == 3, what="three ACL reports")
        assert all(r.verdict is not None and r.verdict.ok for r in server.acl_reports.values())
        assert all(b["acl"] == "restricted as recommended" for b in server.status()["backends"])


def test_the_check_warns_about_the_default_user(
    servers: list[RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    with running_proxy(config(servers, backend="")) as proxy:
        server = server_of(proxy)
        wait_until(lambda: len(server.acl_reports) == 3, what="three ACL reports")
        for report in server.acl_reports.values():
            assert report.verdict is not None
            assert {"migrate", "swapdb", "flushall"} <= set(report.verdict.too_broad)
        text = proxy.call(_metrics(server))
        assert 'shardproxy_backend_acl_ok{backend="s1"} 0.0' in text
    assert "allows MIGRATE, SWAPDB" in caplog.text


async def _metrics(server: ProxyServer) -> str:
    from prometheus_client import generate_latest

    return generate_latest(server.metrics.registry).decode()


def test_refuse_mode_fails_start_with_the_default_user(servers: list[RedisServer]) -> None:
    proxy = ProxyThread(config(servers, backend="", mode="refuse"))
    try:
        with pytest.raises(AclCheckError, match="allows MIGRATE"):
            proxy.start()
    finally:
        proxy.stop()


def test_refuse_mode_refuses_a_reload_to_a_too_broad_user(servers: list[RedisServer]) -> None:
    text = config(servers, mode="refuse")
    with running_proxy(text) as proxy:
        server = server_of(proxy)
        broad = text.replace(ACL_BACKEND, "")
        ok, reason = proxy.call(server.reload_text(broad))
        assert not ok
        assert "backend.acl_check is refuse" in reason and "allows MIGRATE" in reason
        assert server.generation == 1
        ok, _ = proxy.call(server.reload_text(broad.replace("acl_check: refuse", "acl_check: off")))
        assert ok and server.generation == 2


def test_serve_refuses_to_start_in_one_line(servers: list[RedisServer], tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(config(servers, backend="", mode="refuse"))
    done = subprocess.run([*CLI, "serve", "-c", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("shardproxy: backend.acl_check is refuse"), done.stderr
