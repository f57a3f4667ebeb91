"""Metrics, health and status as an operator scrapes them, against real backends."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import redis

from proxy.build_info import BUILD
from proxy.config.schema import parse_config
from tests.support.processes import RedisServer, redis_servers, wait_until
from tests.support.runner import ProxyThread, proxy_for


@pytest.fixture
def cluster() -> Iterator[tuple[ProxyThread, list[RedisServer]]]:
    with redis_servers(3) as servers, proxy_for([s.addr for s in servers]) as proxy:
        yield proxy, servers


def admin_port(proxy: ProxyThread) -> int:
    """The admin port the test configured (no reload here changes it)."""
    admin = parse_config(proxy.config_text).admin
    assert admin is not None
    return admin.port


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(port: int) -> dict[str, float]:
    status, body = http_get(port, "/metrics")
    assert status == 200
    samples: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metric_names_and_values_move(cluster: tuple[ProxyThread, list[RedisServer]]) -> None:
    proxy, _ = cluster
    port = admin_port(proxy)
    r = redis.Redis(port=proxy.port)
    for i in range(100):
        r.set(f"k{i}", i)
        r.get(f"k{i}")
    with pytest.raises(redis.ResponseError):
        r.execute_command("NOSUCHCMD")
    with pytest.raises(redis.ResponseError):
        r.lpush("k1", "x")  # WRONGTYPE from the backend
    m = scrape(port)
    assert m['shardproxy_commands_total{command="set",outcome="ok"}'] >= 100
    assert m['shardproxy_commands_total{command="get",outcome="ok"}'] >= 100
    assert m['shardproxy_commands_total{command="unknown",outcome="rejected"}'] >= 1
    assert m['shardproxy_commands_total{command="lpush",outcome="error"}'] >= 1
    assert m['shardproxy_command_duration_seconds_count{command="get"}'] >= 100
    assert m['shardproxy_command_duration_seconds_bucket{command="get",le="+Inf"}'] >= 100
    assert 'shardproxy_command_duration_seconds_bucket{command="get",le="5e-05"}' in m
    assert m["shardproxy_client_connections"] >= 1
    assert m["shardproxy_client_connections_total"] >= 1
    assert m["shardproxy_config_generation"] == 1
    assert sum(v for k, v in m.items() if k.startswith("shardproxy_backend_up{")) == 3
    backend_counts = [
        v for k, v in m.items() if k.startswith("shardproxy_backend_request_duration_seconds_count")
    ]
    assert len(backend_counts) == 3 and sum(backend_counts) >= 200
    assert any(k.startswith("shardproxy_backend_errors_total{") and "reply" in k for k in m)
    assert any(k.startswith("shardproxy_config_info{") for k in m)
    for kind in ("protocol", "auth", "limit"):
        assert f'shardproxy_client_errors_total{{kind="{kind}"}}' in m
    # No metric label ever carries a key.
    _, body = http_get(port, "/metrics")
    assert b"k1" not in body


def test_stopped_backend_shows_down(cluster: tuple[ProxyThread, list[RedisServer]]) -> None:
    proxy, servers = cluster
    port = admin_port(proxy)
    assert http_get(port, "/readyz")[0] == 200
    servers[1].stop()
    name = "s2"

    def down() -> bool:
        return scrape(port)[f'shardproxy_backend_up{{backend="{name}"}}'] == 0

    wait_until(down, 5, "backend marked down")
    status, body = http_get(port, "/readyz")
    assert status == 503 and name.encode() in body
    status_json = json.loads(http_get(port, "/status")[1])
    by_name = {b["name"]: b for b in status_json["backends"]}
    assert by_name[name]["up"] is False and by_name["s1"]["up"] is True
    servers[1].start()
    wait_until(lambda: not down(), 10, "backend back up")
    assert http_get(port, "/readyz")[0] == 200
    assert http_get(port, "/healthz")[0] == 200


def test_info_proxy_and_keyspace(cluster: tuple[ProxyThread, list[RedisServer]]) -> None:
    proxy, _ = cluster
    r = redis.Redis(port=proxy.port)
    for i in range(60):
        r.set(f"i{i}", i, ex=1000 if i % 2 else None)
    info = r.info()
    assert info["db0"]["keys"] == 60 and info["db0"]["expires"] == 30
    assert info["config_generation"] == 1 and info["phase"] == "none"
    assert info["shardproxy_build"] == BUILD
    assert "redis_version" in info
    assert r.info("keyspace") == {"db0": {"keys": 60, "expires": 30, "avg_ttl": pytest.approx(
        info["db0"]["avg_ttl"], abs=5000)}}  # fmt: skip
    assert "db0" not in r.info("server")
    r3 = redis.Redis(port=proxy.port, protocol=3)
    assert r3.info("keyspace")["db0"]["keys"] == 60


def test_status_json_fields(cluster: tuple[ProxyThread, list[RedisServer]]) -> None:
    proxy, _ = cluster
    redis.Redis(port=proxy.port).set("a", 1)
    status = json.loads(http_get(admin_port(proxy), "/status")[1])
    for field in ("version", "uptime_s", "generation", "config_hash", "phase", "clients"):
        assert field in status
    assert status["build"] == BUILD
    backend = status["backends"][0]
    for field in ("name", "addr", "up", "inflight", "p50_ms", "p99_ms", "errors"):
        assert field in backend


def test_fleet_status_cli_flags_config_drift(backends3: list[RedisServer]) -> None:
    import subprocess
    import sys

    addrs = [b.addr for b in backends3]
    with proxy_for(addrs) as p1, proxy_for(addrs, "slowlog_ms: 5\n") as p2:
        a1, a2 = f"127.0.0.1:{admin_port(p1)}", f"127.0.0.1:{admin_port(p2)}"
        cmd = [sys.executable, "-m", "proxy", "status"]
        same = subprocess.run([*cmd, "--admin", a1], capture_output=True, text=True, timeout=30)
        assert same.returncode == 0, same.stdout + same.stderr
        assert "3/3 up" in same.stdout
        mixed = subprocess.run(
            [*cmd, "--admin", a1, "--admin", a2], capture_output=True, text=True, timeout=30
        )
        assert mixed.returncode == 1 and "CONFIG DIFFERS" in mixed.stdout
        gone = subprocess.run(
            [*cmd, "--admin", a1, "--admin", "127.0.0.1:1"], capture_output=True, text=True,
            timeout=30,
        )  # fmt: skip
        assert gone.returncode == 1 and "UNREACHABLE" in gone.stdout


def test_dashboard_uses_only_exported_metrics(
    cluster: tuple[ProxyThread, list[RedisServer]],
) -> None:
    import re
    from pathlib import Path

    proxy, _ = cluster
    redis.Redis(port=proxy.port).get("warm")  # so per-command families have samples
    _, body = http_get(admin_port(proxy), "/metrics")
    families = re.findall(r"^# TYPE (\S+) (\w+)", body.decode(), re.M)
    exported = {name for name, _ in families}
    exported |= {f"{n}_{s}" for n, t in families if t == "histogram" for s in ("bucket", "count")}
    dashboard = (Path(__file__).parents[2] / "config" / "grafana-dashboard.json").read_text()
    used = set(re.findall(r"shardproxy_[a-z_]+", dashboard))
    assert used, "the dashboard queries no metric"
    assert sorted(used - exported) == []
