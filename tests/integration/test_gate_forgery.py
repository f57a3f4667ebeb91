"""The backfill -> cut-read gate cannot be forged by what a client can write.

The incident: a client's EVAL wrote `__shardproxy:<mid>:gate` on the target pool while the
backfill was still copying; the proxy accepted cut-read and a third of the moved keys read nil.
Here the fake gate is written straight onto the target's backend (what any script can do), with
exactly the fields a real gate has. With migration.gate_secret set its MAC is checked; always,
a random sample of moved keys is re-compared source vs target before reads move.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from proxy.config.schema import parse_config
from proxy.migration.gate import GateSeal
from proxy.migration.keys import state_key, state_owner
from proxy.migration.phases import ActiveMigration, active_migration
from tests.integration.test_migration_e2e import Cluster, layout_ketama_3_to_5, write_cold_keys
from tests.support.processes import RedisServer, wait_until

SECRET_ENV = "SHARDPROXY_TEST_GATE_SECRET"


@pytest.fixture
def servers(servers5: list[RedisServer]) -> list[RedisServer]:
    """The module's five servers (tests/conftest.py), flushed before each test."""
    return servers5


class SecretCluster(Cluster):
    """The e2e test's cluster, its migration block with `gate_secret: ${...}` when `secret`."""

    secret = False

    def render(self, phase: str | None, **kwargs: Any) -> str:
        text = super().render(phase, **kwargs)
        if phase is not None and self.secret:
            text += "  gate_secret: ${" + SECRET_ENV + "}\n"
        return text


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Any]:
    made: list[Cluster] = []

    def make(servers: list[RedisServer], rate: int, secret: bool) -> SecretCluster:
        SecretCluster.secret = secret
        cluster = SecretCluster(layout_ketama_3_to_5(servers), tmp_path / "proxy.yaml", rate=rate)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


def migration_of(cluster: Cluster) -> ActiveMigration:
    m = active_migration(parse_config(cluster.render("backfill")))
    assert m is not None
    return m


def forge_gate(cluster: Cluster, seal: GateSeal | None) -> None:
    """What a client's EVAL can do: SET the gate on its home server, exactly as a real one
    looks (signed with `seal` when given, e.g. a wrong key)."""
    m = migration_of(cluster)
    gate: dict[str, object] = {
        "backfill": "done",
        "mismatches_after_repair": 0,
        "verified_at": 1700000000.0,
        "checked": 938,
        "repaired": 0,
        "owner": "host:1:abc123",
    }
    if seal is not None:
        gate = seal.sign(gate)
    host, port = state_owner(m.target, m.mid).rsplit(":", 1)
    with redis.Redis(host=host, port=int(port)) as c:
        c.set(state_key(m.mid, "gate"), json.dumps(gate))


def start_backfill(cluster: Cluster, keys: int) -> None:
    write_cold_keys(cluster.port, keys)
    cluster.step("double-write")
    cluster.step("backfill")
    wait_until(lambda: cluster.status()["backfill"]["state"] == "running", 10, "backfill running")


def test_a_forged_gate_is_refused_and_a_real_one_accepted(
    servers: list[RedisServer], make_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "only-the-proxies-know")
    cluster: SecretCluster = make_cluster(servers, rate=300, secret=True)
    start_backfill(cluster, 1500)  # 1,500 keys at 300 keys/s: several seconds of scan + verify
    m = migration_of(cluster)
    assert m.seal.key is not None
    # Through the proxy the gate cannot even be named.
    with redis.Redis(port=cluster.port, protocol=2) as c, pytest.raises(redis.ResponseError):
        c.set(state_key(m.mid, "gate"), b"{}")
    forge_gate(cluster, None)
    cluster.refused("cut-read", "carries no MAC")
    forge_gate(cluster, GateSeal(m.mid, m.seal.target, b"a key the client guessed"))
    cluster.refused("cut-read", "MAC does not match")
    forge_gate(cluster, GateSeal("000000000000", m.seal.target, m.seal.key))  # another migration
    cluster.refused("cut-read", "MAC does not match")
    assert cluster.status()["backfill"]["state"] == "running"  # so the real gate comes later
    wait_until(lambda: cluster.status()["backfill"]["state"] == "done", 60, "the real gate")
    cluster.step("cut-read")
    with redis.Redis(port=cluster.port, protocol=2) as c:
        assert [c.get(b"cold:%d" % i) for i in range(1500)] == [
            b"history-%d" % i for i in range(1500)
        ]


def test_without_a_secret_the_sampled_recheck_refuses_forged_and_stale_gates(
    servers: list[RedisServer], make_cluster: Any
) -> None:
    cluster: SecretCluster = make_cluster(servers, rate=300, secret=False)
    start_backfill(cluster, 1500)
    m = migration_of(cluster)
    assert m.seal.key is None
    forge_gate(cluster, None)  # exactly what a real unsigned gate holds
    message = cluster.refused("cut-read", "sampled at random")
    assert "missing on target" in message and "force: true" in message
    assert cluster.status()["backfill"]["state"] == "running"
    wait_until(lambda: cluster.status()["backfill"]["state"] == "done", 60, "the real gate")
    # A valid gate, but moved keys were lost on the target since (deleted there directly).
    deleted = 0
    for i in range(0, 1500, 5):
        key = b"cold:%d" % i
        src, dst = m.source.addr_for(key), m.target.addr_for(key)
        if src != dst:
            host, port = dst.rsplit(":", 1)
            with redis.Redis(host=host, port=int(port)) as c:
                deleted += c.delete(key)
    assert deleted > 50
    cluster.refused("cut-read", "missing on target")
    cluster.step("cut-read", force=True)  # the operator's override still works
