"""The `shardproxy` command line as an operator runs it: check, serve -c, serve --local."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis

from proxy import __version__
from proxy.build_info import BUILD
from tests.support.processes import RedisServer, free_port, port_open, wait_until

CLI = [sys.executable, "-m", "proxy"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=30)


def test_check_prints_pools_and_shares(tmp_path: Path) -> None:
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        "pools:\n  main:\n    servers: [127.0.0.1:7001:1 r1, 127.0.0.1:7002:1 r2, "
        "127.0.0.1:7003:2 r3]\n"
    )
    out = run_cli("check", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "pool main" in out.stdout and "r3" in out.stdout
    data = json.loads(run_cli("check", "-c", str(cfg), "--json").stdout)
    shares = [s["share"] for s in data["pools"][0]["servers"]]
    assert abs(sum(shares) - 1) < 1e-9
    assert shares[2] > shares[0] and shares[2] > shares[1]  # weight 2


def test_check_rejects_bad_config_in_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("pools:\n  main:\n    servers: [127.0.0.1:99999]\nbogus: 1\n")
    out = run_cli("check", "-c", str(cfg))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "pools.main.servers[0]" in lines[0] and "bogus: unknown key" in lines[0]
    missing = run_cli("check", "-c", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr


def test_version_names_the_build() -> None:
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout == f"shardproxy {__version__} ({BUILD})\n"
    assert BUILD in ("compiled", "pure")


def test_bad_arguments_exit_nonzero() -> None:
    assert run_cli("serve").returncode != 0
    assert run_cli("frobnicate").returncode != 0
    out = run_cli("serve", "--local", "0")
    assert out.returncode == 2 and "--local" in out.stderr


def _http_json(port: int, path: str) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def serve_local(port: int, admin: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "serve", "--local", "2", "--listen", f"127.0.0.1:{port}", "--admin",
         f"127.0.0.1:{admin}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_serve_local_spawns_and_stops_backends() -> None:
    port, admin = free_port(), free_port()
    proc = serve_local(port, admin)
    try:
        wait_until(lambda: port_open(port), 20, "proxy listening")
        r = redis.Redis(port=port)
        for i in range(50):
            r.set(f"k{i}", i)
        assert r.dbsize() == 50
        status = _http_json(admin, "/status")
        backends = status["backends"]
        assert isinstance(backends, list) and len(backends) == 2
        backend_ports = [int(b["addr"].rsplit(":", 1)[1]) for b in backends]
        assert all(port_open(p) for p in backend_ports)
        # The proxy's own backend user has the ACL line: a script cannot escape the deny list.
        with pytest.raises(redis.ResponseError):
            r.eval("return redis.call('FLUSHALL')", 1, "k0")
        assert r.dbsize() == 50
        wait_until(
            lambda: all(
                b["acl"] == "restricted as recommended"
                for b in _http_json(admin, "/status")["backends"]
            ),
            10,
            "the ACL check",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "backend user allows" not in err
    wait_until(lambda: not any(port_open(p) for p in backend_ports), 10, "backends stopped")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return False


def test_serve_local_restarts_a_dead_backend() -> None:
    port, admin = free_port(), free_port()
    proc = serve_local(port, admin)
    try:
        wait_until(lambda: port_open(port), 20, "proxy listening")
        status = _http_json(admin, "/status")
        backends = status["backends"]
        assert isinstance(backends, list)
        victim = int(backends[0]["addr"].rsplit(":", 1)[1])
        old_pid = int(redis.Redis(port=victim).info("server")["process_id"])
        os.kill(old_pid, signal.SIGKILL)

        def restarted() -> bool:
            try:
                return int(redis.Redis(port=victim).info("server")["process_id"]) != old_pid
            except redis.ConnectionError:
                return False

        wait_until(restarted, 10, "the dead backend started again on its port")
        assert not _zombie(old_pid)  # reaped, not left a zombie
        r = redis.Redis(port=port)

        def serves_every_key() -> bool:
            try:
                return all(r.set(f"after{i}", i) for i in range(20))
            except redis.ResponseError:  # until the proxy's user is back on the new process
                return False

        wait_until(serves_every_key, 15, "every key served again")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "starting it again" in err


def test_serve_config_file(backends3: list[RedisServer], tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    cfg = tmp_path / "p.yaml"
    servers = ", ".join(b.addr for b in backends3)
    cfg.write_text(
        f"listen: 127.0.0.1:{port}\nadmin: 127.0.0.1:{admin}\nlog_format: json\n"
        f"pools:\n  main:\n    servers: [{servers}]\n"
    )
    proc = subprocess.Popen([*CLI, "serve", "-c", str(cfg)], stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: port_open(port), 20, "proxy listening")
        assert redis.Redis(port=port).ping()
        assert _http_json(admin, "/readyz")["ready"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    first = json.loads(err.splitlines()[0])
    assert first["level"] == "info" and "serving on" in first["msg"]
    assert os.path.exists(cfg)
