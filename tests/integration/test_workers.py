"""`workers: 2` as an operator runs it: real `shardproxy serve` processes (a supervisor and its
workers) over real redis-server backends. Connections spread over both workers, reloads reach
every worker or none, a killed worker comes back on the current config, metrics are summed, and
no worker outlives its supervisor."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.processes import RedisServer, free_port, port_open, wait_until
from tests.support.runner import simple_config

CLI = [sys.executable, "-m", "proxy"]
WORKERS = "workers: 2\n"
CONNECTIONS = 40  # SO_REUSEPORT spreads by source port: all on one worker has odds of 2**-39


@pytest.fixture(autouse=True)
def _flush(backends3: list[RedisServer]) -> None:
    for s in backends3:
        with s.client() as c:
            c.flushall()


def http(port: int, path: str, method: str = "GET") -> tuple[int, Any]:
    data = b"" if method == "POST" else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    return status, (json.loads(body) if path != "/metrics" else body.decode())


def metric(admin: int, sample: str) -> float:
    _, body = http(admin, "/metrics")
    found = re.search(r"^" + re.escape(sample) + r" (\S+)$", body, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@dataclass
class Supervised:
    proc: subprocess.Popen[str]
    port: int
    admin: int
    path: Path
    log: Path

    def status(self) -> dict[str, Any]:
        code, body = http(self.admin, "/status")
        assert code == 200
        return body  # type: ignore[no-any-return]

    def worker_pids(self) -> list[int]:
        return [int(w["pid"]) for w in self.status()["workers"]]

    def all_serving(self) -> bool:
        workers = self.status()["workers"]
        return all(w["up"] and w["ready"] for w in workers)

    def run_dir(self) -> str:
        found = re.search(r"run dir (\S+)\)", self.log.read_text())
        assert found, self.log.read_text()
        return found.group(1)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)


@contextlib.contextmanager
def supervised(
    backends: list[RedisServer],
    tmp_path: Path,
    *args: str,
    render: Callable[[int, int], str] | None = None,
) -> Iterator[Supervised]:
    """A supervisor with 2 workers on `render(port, admin)` (default: one pool of `backends`)."""
    port, admin = free_port(), free_port()
    path = tmp_path / "proxy.yaml"
    addrs = [b.addr for b in backends]
    path.write_text(render(port, admin) if render else simple_config(addrs, port, admin, WORKERS))
    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([*CLI, "serve", "-c", str(path), *args], stderr=err, text=True)
    handle = Supervised(proc, port, admin, path, log)
    try:
        wait_until(lambda: http(admin, "/readyz")[0] == 200, 30, "supervisor ready")
        wait_until(handle.all_serving, 10, "every worker serving")
        yield handle
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@contextlib.contextmanager
def clients(port: int, n: int = CONNECTIONS) -> Iterator[list[redis.Redis]]:
    conns = [redis.Redis(port=port, single_connection_client=True) for _ in range(n)]
    try:
        yield conns
    finally:
        for c in conns:
            c.close()


def generations(conns: list[redis.Redis]) -> set[int]:
    return {int(c.info("proxy")["config_generation"]) for c in conns}


def test_workers_share_the_port_and_their_metrics_add_up(
    backends3: list[RedisServer], tmp_path: Path
) -> None:
    with supervised(backends3, tmp_path, "--watch") as sup, clients(sup.port) as conns:
        pids = sup.worker_pids()
        assert len(pids) == 2 and all(alive(p) for p in pids)
        per_pid = Counter(int(c.info("server")["process_id"]) for c in conns)
        assert set(per_pid) == set(pids), per_pid  # both workers took connections
        for i, c in enumerate(conns):
            assert c.set(f"k{i}", i)
            for _ in range(5):
                assert c.get(f"k{i}") == str(i).encode()
        status = sup.status()
        assert status["clients"] == CONNECTIONS
        assert {w["pid"]: w["clients"] for w in status["workers"]} == dict(per_pid)
        assert [b["up"] for b in status["backends"]] == [True] * 3
        assert sum(b["requests"] for b in status["backends"]) >= CONNECTIONS * 6
        get_ok = 'shardproxy_commands_total{command="get",outcome="ok"}'
        wait_until(lambda: metric(sup.admin, get_ok) == CONNECTIONS * 5, 10, "GETs summed")
        set_ok = 'shardproxy_commands_total{command="set",outcome="ok"}'
        assert metric(sup.admin, set_ok) == CONNECTIONS
        assert metric(sup.admin, 'shardproxy_command_duration_seconds_count{command="get"}') == (
            CONNECTIONS * 5
        )
        assert metric(sup.admin, "shardproxy_client_connections") == CONNECTIONS
        assert metric(sup.admin, "shardproxy_workers") == 2
        assert metric(sup.admin, "shardproxy_config_generation") == 1
        cli = [*CLI, "status", "--admin", f"127.0.0.1:{sup.admin}"]
        table = subprocess.run(cli, capture_output=True, text=True, timeout=30)
        assert table.returncode == 0 and "3/3 up" in table.stdout, table.stdout + table.stderr
        # --watch on the supervisor: a file edit reaches every worker
        sup.path.write_text(sup.path.read_text() + "slowlog_ms: 25\n")
        wait_until(lambda: generations(conns) == {2}, 10, "every connection on generation 2")
        assert sup.status()["generation"] == 2


def test_reload_reaches_every_worker_or_none(backends3: list[RedisServer], tmp_path: Path) -> None:
    with supervised(backends3, tmp_path) as sup, clients(sup.port) as conns:
        good = sup.path.read_text()
        sup.path.write_text(good + "slowlog_ms: 25\n")
        code, reply = http(sup.admin, "/reload", "POST")
        assert (code, reply["ok"], reply["generation"]) == (200, True, 2), reply
        assert generations(conns) == {2}  # applied by all before the reply
        sup.path.write_text(good + "slowlog_ms: 30\n")
        sup.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: generations(conns) == {3}, 10, "SIGHUP reached every worker")
        assert sup.status()["generation"] == 3
        refused = [
            (good + "bogus: 1\n", "bogus: unknown key"),
            (good.replace("workers: 2", "workers: 3"), "workers cannot change on reload"),
            (good.replace(f"listen: 127.0.0.1:{sup.port}", "listen: 127.0.0.1:1"), "listen"),
        ]
        for text, why in refused:
            sup.path.write_text(text)
            code, reply = http(sup.admin, "/reload", "POST")
            assert code == 400 and why in reply["message"], reply
            assert reply["generation"] == 3
        assert generations(conns) == {3}
        assert all(c.ping() for c in conns)
        reloads = "shardproxy_config_reloads_total{outcome=%s}"
        assert metric(sup.admin, reloads % '"ok"') == 2  # one per reload, not per worker
        assert metric(sup.admin, reloads % '"refused"') == 3
        assert {w["generation"] for w in sup.status()["workers"]} == {3}


def test_killed_worker_comes_back_on_the_current_config(
    backends3: list[RedisServer], tmp_path: Path
) -> None:
    with supervised(backends3, tmp_path) as sup:
        sup.path.write_text(sup.path.read_text() + "slowlog_ms: 25\n")
        assert http(sup.admin, "/reload", "POST")[0] == 200
        with clients(sup.port, 10) as conns:
            for c in conns:
                c.set("before", 1)
        set_ok = 'shardproxy_commands_total{command="set",outcome="ok"}'
        wait_until(lambda: metric(sup.admin, set_ok) == 10, 10, "SETs published")
        victim = sup.worker_pids()[1]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not alive(victim), 10, "killed worker gone")
        with clients(sup.port, 20) as conns:  # the survivor holds the port meanwhile
            assert all(c.ping() for c in conns)

        def restarted() -> bool:
            worker = sup.status()["workers"][1]
            return bool(worker["pid"] != victim and worker["ready"])

        wait_until(restarted, 15, "worker 1 restarted")
        worker = sup.status()["workers"][1]
        assert (worker["restarts"], worker["generation"]) == (1, 2)
        assert metric(sup.admin, "shardproxy_worker_restarts_total") == 1
        assert metric(sup.admin, set_ok) == 10  # the dead worker's counts stay in the sum
        with clients(sup.port) as conns:
            assert len({int(c.info("server")["process_id"]) for c in conns}) == 2
            assert generations(conns) == {2}
        assert sup.stop() == 0


def test_backfill_runs_in_worker_0_and_every_worker_checks_the_gate(
    backends3: list[RedisServer], tmp_path: Path
) -> None:
    a, b, c = backends3
    old = f"      - {a.addr}:1 r1\n      - {b.addr}:1 r2\n"
    phase = [""]

    def render(port: int, admin: int) -> str:
        text = (
            f"listen: 127.0.0.1:{port}\nadmin: 127.0.0.1:{admin}\n{WORKERS}"
            "backend:\n  retry_backoff_ms: 50\n  health_check_interval_ms: 200\n"
            f"pools:\n  old:\n    servers:\n{old}"
            f"  new:\n    servers:\n{old}      - {c.addr}:1 r3\nroute: old\n"
        )
        return text + (f"migration: {{to: new, phase: {phase[0]}}}\n" if phase[0] else "")

    def step(to: str) -> tuple[int, Any]:
        phase[0] = to
        sup.path.write_text(render(sup.port, sup.admin))
        return http(sup.admin, "/reload", "POST")

    with supervised(backends3, tmp_path, render=render) as sup, clients(sup.port) as conns:
        for i, conn in enumerate(conns):
            for j in range(10):
                conn.set(f"m{i}:{j}", j)
        assert step("double-write")[0] == 200
        assert step("backfill")[0] == 200
        wait_until(lambda: sup.status()["backfill"]["state"] == "done", 30, "backfill done")
        workers = sup.status()["workers"]
        assert [w["backfill"] for w in workers] == ["done", "idle"]
        moved = sup.status()["backfill"]["copied"]
        assert moved > 0
        copied = 'shardproxy_backfill_keys_total{outcome="copied"}'
        wait_until(lambda: metric(sup.admin, copied) == moved, 5, "copied keys published")
        code, reply = step("cut-read")  # the gate, read by both workers
        assert code == 200, reply
        assert generations(conns) == {4}
        for i, conn in enumerate(conns):  # reads now come from the target pool
            assert [conn.get(f"m{i}:{j}") for j in range(10)] == [b"%d" % j for j in range(10)]


def test_sigterm_drains_every_worker_and_leaves_nothing(
    backends3: list[RedisServer], tmp_path: Path
) -> None:
    with supervised(backends3, tmp_path) as sup:
        pids, run_dir = sup.worker_pids(), sup.run_dir()
        assert os.path.isdir(os.path.join(run_dir, "metrics"))
        with clients(sup.port, 4) as conns:
            pipe = conns[0].pipeline(transaction=False)
            for i in range(200):
                pipe.set(f"p{i}", i)
            assert all(pipe.execute())
            assert sup.stop() == 0
        assert not any(alive(p) for p in pids)
        assert not os.path.exists(run_dir)
        assert not port_open(sup.port) and not port_open(sup.admin)
        log = sup.log.read_text()
        assert "Traceback" not in log and "stopped" in log


def test_workers_stop_when_the_supervisor_is_killed(
    backends3: list[RedisServer], tmp_path: Path
) -> None:
    with supervised(backends3, tmp_path) as sup:
        pids, run_dir = sup.worker_pids(), sup.run_dir()
        sup.proc.kill()
        sup.proc.wait(10)
        wait_until(lambda: not any(alive(p) for p in pids), 15, "orphaned workers exit")
        wait_until(lambda: not port_open(sup.port), 5, "listen port closed")
        wait_until(lambda: not os.path.exists(run_dir), 5, "run dir removed by the workers")


def test_serve_local_with_workers() -> None:
    port, admin = free_port(), free_port()
    args = ["--local", "2", "--workers", "2", "--listen", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(
        [*CLI, "serve", *args, "--admin", f"127.0.0.1:{admin}"], stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: http(admin, "/readyz")[0] == 200, 30, "ready")
        r = redis.Redis(port=port)
        for i in range(20):
            r.set(f"k{i}", i)
        assert r.dbsize() == 20
        status = http(admin, "/status")[1]
        assert len(status["workers"]) == 2 and len(status["backends"]) == 2
        backend_ports = [int(b["addr"].rsplit(":", 1)[1]) for b in status["backends"]]
        code, reply = http(admin, "/reload", "POST")
        assert code == 400 and "embedded config" in reply["message"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert not any(port_open(p) for p in backend_ports)


def test_workers_arguments_and_check(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=30)

    for bad in ("0", "65", "-1"):
        out = run("serve", "--local", "1", "--workers", bad)
        assert out.returncode == 2 and "--workers takes 1..64" in out.stderr, out.stderr
    cfg = tmp_path / "p.yaml"
    cfg.write_text("listen: 127.0.0.1:0\npools: {main: {servers: [127.0.0.1:7001]}}\n")
    out = run("serve", "-c", str(cfg), "--workers", "2")
    assert out.returncode == 2 and "fixed listen port" in out.stderr
    cfg.write_text("workers: 4\npools: {main: {servers: [127.0.0.1:7001]}}\n")
    out = run("check", "-c", str(cfg))
    assert out.returncode == 0 and "workers 4" in out.stdout
    assert json.loads(run("check", "-c", str(cfg), "--json").stdout)["workers"] == 4
    cfg.write_text("workers: 0\npools: {main: {servers: [127.0.0.1:7001]}}\n")
    out = run("check", "-c", str(cfg))
    assert out.returncode == 2 and "workers: must be 1..64" in out.stderr
