"""RQ (a Python job queue with fixed key names: rq:job:<id>, rq:queue:default...) through the proxy,
its keys given a one-server pool by the prefix route `rq:`, while other keyed traffic runs through
the default pool and that pool is re-sharded phase by phase (reloads). Each job records its effect
under `rq:` (rq_jobs.py), so effects are counted exactly: no job lost, none run twice.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
import redis
from rq import Queue, Retry

from tests.integration import rq_jobs
from tests.support.processes import RedisServer, redis_servers, wait_until
from tests.support.routed import ROUTE, Routed

REPO = Path(__file__).resolve().parents[2]
BATCH = (40, 10, 10)  # per phase: jobs that succeed, fail once then succeed, always fail


@pytest.fixture(scope="module")
def servers() -> Iterator[list[RedisServer]]:
    with redis_servers(5) as five:
        yield five


class Traffic(threading.Thread):
    """Other keyed traffic through the default pool: SET then GET back, counting wrong answers."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis(port=port)
        self.stop = threading.Event()
        self.ops = 0
        self.errors: list[str] = []
        self.values: dict[bytes, bytes] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            key = b"user:%d" % (self.ops % 500)
            value = b"%d" % self.ops
            try:
                self.client.set(key, value)
                got = self.client.get(key)
            except redis.RedisError as exc:
                self.errors.append(f"{key!r}: {exc}")
                continue
            if got != value:
                self.errors.append(f"{key!r}: wrote {value!r}, read {got!r}")
            self.values[key] = value
            self.ops += 1


def start_worker(port: int, log: BinaryIO, *extra: str) -> subprocess.Popen[bytes]:
    """An `rq worker` subprocess: without --burst it waits for jobs in a blocking pop (BLMOVE
    through the proxy) until SIGTERM; with --burst it drains the queue and exits. Its log (a
    traceback per failed job) goes to a file: a pipe nobody reads would fill and stall it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "rq.cli", "worker", *extra, "-w", "rq.worker.SimpleWorker",
         "-u", f"redis://127.0.0.1:{port}", "default"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip


def effects(client: redis.Redis, queue: Queue) -> tuple[int, int]:
    """(successful jobs recorded, jobs in the failed registry)."""
    return client.llen("rq:test:done"), queue.failed_job_registry.count


def wait_for_batch(client: redis.Redis, queue: Queue, jobs: dict[str, list[int]]) -> None:
    expected = (len(jobs["succeed"]) + len(jobs["flaky"]), len(jobs["fail"]))

    def done() -> bool:
        got = effects(client, queue)
        return got[0] >= expected[0] and got[1] >= expected[1]

    try:
        wait_until(done, 60, "the batch done")
    except TimeoutError:
        registries = (
            queue.count,
            queue.started_job_registry.count,
            queue.scheduled_job_registry.count,
        )
        raise AssertionError(
            f"effects {effects(client, queue)}, expected {expected}; queued,"
            f" started, scheduled: {registries}"
        ) from None


def enqueue_batch(queue: Queue, start: int) -> dict[str, list[int]]:
    ok, flaky, fail = BATCH
    kinds: dict[str, list[int]] = {"succeed": [], "flaky": [], "fail": []}
    index = start
    for kind, count in (("succeed", ok), ("flaky", flaky), ("fail", fail)):
        for _ in range(count):
            func = getattr(rq_jobs, kind)
            queue.enqueue(func, index, retry=Retry(max=2) if kind != "succeed" else None)
            kinds[kind].append(index)
            index += 1
    return kinds


def test_rq_through_a_migration_of_the_default_pool(
    servers: list[RedisServer], tmp_path: Path
) -> None:
    for s in servers:
        s.client().flushall()
    routed = Routed(servers, tmp_path / "proxy.yaml", queues=[3])
    traffic = Traffic(routed.port)
    traffic.start()
    queue = Queue("default", connection=routed.client)
    migration = "migration:\n  to: main2\n"
    steps: list[tuple[str, str | None]] = [
        ("main", "double-write"), ("main", "backfill"), ("main", "cut-read"),
        ("main", "retire"), ("main2", None), ("main2", None),
    ]  # fmt: skip
    jobs: dict[str, list[int]] = {"succeed": [], "flaky": [], "fail": []}
    log_path = tmp_path / "worker.log"
    log = log_path.open("ab")
    waiting = start_worker(routed.port, log)  # blocked in a pop between batches, across reloads
    try:
        for round_, (route, phase) in enumerate(steps):
            for kind, indexes in enqueue_batch(queue, round_ * sum(BATCH)).items():
                jobs[kind] += indexes
            burst = start_worker(routed.port, log, "--burst")  # a second worker, racing the first
            block = f"{migration}  phase: {phase}\n" if phase else ""
            ok, why = routed.reload(routed.render(ROUTE, route, block))  # while jobs run
            assert ok, why
            if phase == "backfill":
                wait_until(lambda: routed.status()["backfill"]["state"] == "done", 60, "backfill")
            assert burst.wait(120) == 0, log_path.read_text(errors="replace")[-2000:]
            wait_for_batch(routed.client, queue, jobs)
        waiting.terminate()  # SIGTERM: rq's warm shutdown
        assert waiting.wait(30) == 0, log_path.read_text(errors="replace")[-2000:]
        traffic.stop.set()
        traffic.join(10)
        check_jobs(routed, queue, jobs)
        assert traffic.ops > 0 and traffic.errors == [], traffic.errors[:5]
        for key, value in traffic.values.items():
            assert routed.client.get(key) == value
            assert routed.owner(key) in routed.on_backends(key)  # no cleanup ran: old copies stay
        for i in (0, 1, 2):  # no rq: key ever reached the default pools' servers
            assert list(servers[i].client().scan_iter(match="rq:*")) == []
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait(10)
        log.close()
        traffic.stop.set()
        routed.stop()


def check_jobs(routed: Routed, queue: Queue, jobs: dict[str, list[int]]) -> None:
    c = routed.client
    done = sorted(int(x) for x in c.lrange("rq:test:done", 0, -1))
    assert done == sorted(jobs["succeed"] + jobs["flaky"])  # each once: none lost, none twice
    for kind, runs in (("succeed", 1), ("flaky", 2), ("fail", 3)):
        for index in jobs[kind]:
            assert c.get(f"rq:test:attempts:{index}") == b"%d" % runs, (kind, index)
    assert queue.failed_job_registry.count == len(jobs["fail"])
    assert queue.finished_job_registry.count == len(done)
    assert queue.count == 0
