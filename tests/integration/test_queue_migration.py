"""Redis as a job queue and a message bus through a migration walked end to end.

Producers LPUSH, consumers BLPOP or BLMOVE (then LREM, an acknowledged job), a publisher
PUBLISHes on channels that a channel subscriber (RESP2) and a pattern subscriber (RESP3) listen
to, and counter threads WATCH / MULTI / EXEC, all through the proxy (tests/support/queueload.py)
while it steps none -> double-write -> backfill -> cut-read -> retire (and cleanup) -> route: new
by reloads. At the end: every item consumed exactly once, every message received exactly once
and in order by each subscriber (no subscriber reconnected), every counter equal to its EXECs,
`shardproxy verify` finds nothing at cut-read, and every key is on its owner in the new ring.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from tests.support.cluster import (
    Cluster,
    Layout,
    addr_of,
    layout_ketama_2_to_3_disjoint,
    layout_ketama_3_to_5,
    only_on_owners,
    pool_of,
    proxy_connections,
    run_verify,
    server_client,
    walk,
)
from tests.support.processes import RedisServer, wait_until
from tests.support.queueload import COUNTERS, QUEUES, Flow, read_counters, work_list

PROGRESS = 100  # operations every producing thread must do in each phase before the next step

pytestmark = pytest.mark.slow


def queues_empty(port: int) -> bool:
    with redis.Redis(port=port) as c:
        return all(c.llen(q) == 0 for q in QUEUES)


@pytest.mark.parametrize(
    "make_layout",
    [layout_ketama_3_to_5, layout_ketama_2_to_3_disjoint],
    ids=["ketama-3-to-5", "ketama-2-to-3-disjoint"],
)
def test_queues_and_subscribers_through_a_migration(
    servers5: list[RedisServer], cluster_factory: Any, make_layout: Any
) -> None:
    layout: Layout = make_layout(servers5)
    cluster: Cluster = cluster_factory(layout)
    flow = Flow(cluster.port).start()

    def at_each(phase: str) -> None:
        wait_until(flow.progress(PROGRESS), 30, f"progress in {phase}")
        assert not flow.problems(), "\n".join(flow.problems())
        if phase == "cut-read":  # a quiet moment: the queues drained, no counter moving
            flow.pause(lambda: queues_empty(cluster.port))
            verify = run_verify(cluster.path)
            assert verify.returncode == 0, verify.stdout + verify.stderr
            flow.resume()
        if phase == "route new":  # servers that left: their subscriber connections moved away
            removed = {addr_of(x) for x in layout.old} - {addr_of(x) for x in layout.new}
            for addr in removed:
                wait_until(lambda a=addr: proxy_connections(a) == 0, 10, f"connections to {addr}")
            wait_until(flow.progress(PROGRESS), 30, "progress once the old servers left")

    try:
        walk(cluster, at_each)
        flow.finish()
    finally:
        flow.stop.set()
    assert not flow.problems(), "\n".join(flow.problems())
    assert cluster.server.migration.double_write_errors == {}

    new = pool_of(cluster, "new")
    with redis.Redis(port=cluster.port) as c:
        leftover = [item for q in QUEUES for item in c.lrange(q, 0, -1)]
        assert all(c.llen(work_list(q)) == 0 for q in QUEUES)
        counters = read_counters(c)
    on_owner = {}
    for key in COUNTERS:
        with server_client(new.addr_for(key.encode())) as owner:
            on_owner[key] = int(owner.get(key) or 0)
    assert on_owner == counters
    only_on_owners(cluster)
    flow.check(leftover, counters)
