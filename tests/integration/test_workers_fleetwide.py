"""`workers: 2` and what is one per fleet: the backend user's ACL is checked by the supervisor
alone (once at start, once per reload; refuse mode stops it before any worker starts and refuses
a reload for every worker), and /status adds up what each worker sizes for itself (client limits
from each one's fd limit, memory held and each one's share of client.max_memory_bytes, busy and
local-resource events per backend). Real supervisor and workers over default-user redis-servers,
whose `+@all` user the check finds too broad."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.test_workers import (
    CLI,
    WORKERS,
    clients,
    generations,
    http,
    metric,
    supervised,
)
from tests.support.processes import RedisServer, free_port, wait_until
from tests.support.runner import simple_config

BUDGET = 64 * 1024 * 1024  # client.max_memory_bytes for the whole fleet


@pytest.fixture(autouse=True)
def _flush(backends3: list[RedisServer]) -> None:
    for s in backends3:
        with s.client() as c:
            c.flushall()


def fleet_config(backends: list[RedisServer], port: int, admin: int, mode: str) -> str:
    extra = WORKERS + f"client: {{max_memory_bytes: {BUDGET}}}\n"
    text = simple_config([b.addr for b in backends], port, admin, extra)
    return text.replace("backend:\n", f"backend:\n  acl_check: {mode}\n")


def acl_warnings(log: Path) -> list[str]:
    return [ln for ln in log.read_text().splitlines() if "WARNING" in ln and "allows MIGRATE" in ln]


def test_refuse_mode_stops_before_any_worker_in_one_line(
    backends3: list[RedisServer], tmp_path: Path
) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(fleet_config(backends3, free_port(), free_port(), "refuse"))
    done = subprocess.run([*CLI, "serve", "-c", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("shardproxy: backend.acl_check is refuse"), done.stderr
    assert "allows MIGRATE" in last
    assert "starting 2 workers" not in done.stderr and "worker" not in last


def test_acl_checked_once_for_the_fleet_and_refused_reload_changes_no_worker(
    backends3: list[RedisServer], tmp_path: Path
) -> None:
    render = lambda port, admin: fleet_config(backends3, port, admin, "warn")  # noqa: E731
    with supervised(backends3, tmp_path, render=render) as sup, clients(sup.port) as conns:

        def checked() -> bool:
            return all(b["acl"] and "allows MIGRATE" in b["acl"] for b in sup.status()["backends"])

        wait_until(checked, 20, "every backend's ACL in the merged /status")
        assert len(acl_warnings(sup.log)) == 3, acl_warnings(sup.log)  # the supervisor's alone
        for name in ("s1", "s2", "s3"):
            assert metric(sup.admin, f'shardproxy_backend_acl_ok{{backend="{name}"}}') == 0
        good = sup.path.read_text()
        sup.path.write_text(good.replace("acl_check: warn", "acl_check: refuse"))
        code, reply = http(sup.admin, "/reload", "POST")
        assert code == 400 and "backend.acl_check is refuse" in reply["message"], reply
        assert "worker" not in reply["message"]  # one refusal for the fleet, not one per worker
        assert reply["generation"] == 1 and generations(conns) == {1}
        sup.path.write_text(good.replace("acl_check: warn", "acl_check: off"))
        code, reply = http(sup.admin, "/reload", "POST")
        assert (code, reply["generation"]) == (200, 2), reply
        assert generations(conns) == {2}
        assert len(acl_warnings(sup.log)) == 3  # neither reload checked again: refused, then off


def test_status_adds_up_what_each_worker_sizes(
    backends3: list[RedisServer], tmp_path: Path
) -> None:
    render = lambda port, admin: fleet_config(backends3, port, admin, "off")  # noqa: E731
    with supervised(backends3, tmp_path, render=render) as sup, clients(sup.port) as conns:
        per_pid = {int(c.info("server")["process_id"]): c.info("clients") for c in conns}
        assert len(per_pid) == 2  # INFO answers for the worker the connection landed on
        status = sup.status()
        workers = {w["pid"]: w for w in status["workers"]}
        for pid, info in per_pid.items():
            assert workers[pid]["max_clients"] == int(info["maxclients"]) > 0
            assert workers[pid]["max_memory_bytes"] == BUDGET // 2  # each worker's share
        assert status["max_clients"] == sum(int(i["maxclients"]) for i in per_pid.values())
        assert status["max_memory_bytes"] == BUDGET
        assert status["client_memory_bytes"] >= 0 and status["clients_throttled"] == 0
        for backend in status["backends"]:
            assert backend["busy_events"] == 0 and backend["local_resource_failures"] == 0
            assert backend["acl"] is None  # acl_check: off
        wait_until(
            lambda: metric(sup.admin, "shardproxy_client_max_connections") == status["max_clients"],
            10,
            "client limits summed in /metrics",
        )
