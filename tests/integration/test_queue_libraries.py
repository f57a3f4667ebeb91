"""Real job-queue libraries with a worker, through the proxy, while other keyed traffic runs and
the proxy walks a migration of the pool that holds their keys (every key moves: ketama 2 -> 3
new servers, the old ones leave the config at the end).

- Celery (kombu's Redis transport) as broker and result backend, `global_keyprefix: "{celery}"`
  (a hash tag: every key and channel of it on one backend); a `celery worker -P solo`
  subprocess. In each phase a batch of tasks: plain, self.retry() once, autoretry once, failing.
- BullMQ (Node, ioredis) with `prefix: "{bull}"`, a Worker of concurrency 4 in a node process
  (tests/node/jobs.js). In each phase a batch of jobs: plain, failing once then retried, failing
  every attempt. Skipped, with the reason, without node/npm or when `npm ci` cannot install.

Counts are exact: every task/job ends as its mode says, each ran exactly as many times as its
mode says (nothing lost, nothing run twice), the queues end empty, and the other traffic's
replies all matched its model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.cluster import (
    Cluster,
    layout_ketama_2_to_3_disjoint,
    only_on_owners,
    walk,
)
from tests.support.loadgen import Load, Worker
from tests.support.processes import RedisServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "node"
BATCH = 50  # tasks or jobs per phase: 300 over the six phases
MODES = ("ok", "retry", "auto", "ok", "fail")  # task i gets MODES[i % 5]
RUNS = {"ok": 1, "retry": 2, "auto": 2, "fail": 1}
CELERY = [sys.executable, "-m", "celery"]


def other_traffic(port: int) -> Load:
    """Keyed traffic beside the library's: two clients with an exact model of their keys."""
    workers = [
        Worker(port, f"w{i}", protocol=2 + i, pipeline=4 * i, keys_per_family=20, seed=i)
        for i in range(2)
    ]
    for w in workers:
        w.prepopulate()
    return Load(workers).start()


def stop_process(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# -- Celery ----------------------------------------------------------------------------------


def test_celery_worker_through_a_migration(
    servers5: list[RedisServer], cluster_factory: Any, tmp_path: Path
) -> None:
    pytest.importorskip("celery")
    cluster: Cluster = cluster_factory(layout_ketama_2_to_3_disjoint(servers5))
    url = f"redis://127.0.0.1:{cluster.port}/0"
    os.environ["SHARDPROXY_CELERY_URL"] = url  # read when tests.support.celery_app is imported
    from tests.support import celery_app

    app = celery_app.app
    app.conf.broker_url = app.conf.result_backend = url
    log = tmp_path / "worker.log"
    env = {**os.environ, "SHARDPROXY_CELERY_URL": url}
    with log.open("w") as out:
        worker = subprocess.Popen(
            [*CELERY, "-A", "tests.support.celery_app", "worker", "-P", "solo", "-l", "warning",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    load = other_traffic(cluster.port)
    sent: dict[int, str] = {}

    def at_each(phase: str) -> None:
        base = len(sent)
        results = []
        for i in range(base, base + BATCH):
            sent[i] = MODES[i % len(MODES)]
            results.append(celery_app.work.apply_async((i, sent[i]), task_id=f"task-{i}"))
        for i, result in enumerate(results, base):
            if sent[i] == "fail":
                with pytest.raises(KeyError):
                    result.get(timeout=20)
            else:
                assert result.get(timeout=20) == 2 * i, f"task {i} in {phase}"
        assert worker.poll() is None, log.read_text()[-3000:]
        assert not load.problems(), "\n".join(load.problems())

    try:
        walk(cluster, at_each)
    finally:
        load.stop()
        stop_process(worker)
        app.close()
    assert not load.problems(), "\n".join(load.problems())
    with redis.Redis(port=cluster.port) as c:
        runs = {i: int(c.get(celery_app.runs_key(i)) or 0) for i in sent}
        assert c.llen("{celery}celery") == 0
        assert c.hlen("{celery}unacked") == 0
    wrong = {i: (sent[i], n) for i, n in runs.items() if n != RUNS[sent[i]]}
    assert not wrong, f"tasks run a wrong number of times (mode, runs): {wrong}"
    assert len(sent) == 6 * BATCH
    only_on_owners(cluster)


# -- BullMQ ----------------------------------------------------------------------------------


def node_modules() -> Path:
    """tests/node installed with `npm ci` into a cache directory keyed by the lockfile, once;
    skips the test (with the reason) when node, npm or the install is unavailable."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the BullMQ test")
    lock = (NODE_DIR / "package-lock.json").read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    target = cache / "shardproxy-tests" / f"node-{hashlib.sha256(lock).hexdigest()[:16]}"
    if not (target / "node_modules" / "bullmq").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(NODE_DIR / name, target / name)
        try:
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                cwd=target, capture_output=True, text=True, timeout=240,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.skip("npm ci of bullmq timed out")
        if done.returncode != 0:
            pytest.skip(f"npm ci of bullmq failed: {done.stderr.strip()[-300:]}")
    return target / "node_modules"


def test_bullmq_worker_through_a_migration(
    servers5: list[RedisServer], cluster_factory: Any, tmp_path: Path
) -> None:
    modules = node_modules()
    cluster: Cluster = cluster_factory(layout_ketama_2_to_3_disjoint(servers5))
    errors = tmp_path / "node.err"
    with errors.open("w") as err:
        node = subprocess.Popen(
            ["node", str(NODE_DIR / "jobs.js"), str(cluster.port)],
            env={**os.environ, "NODE_PATH": str(modules)},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
        )  # fmt: skip
    assert node.stdin is not None and node.stdout is not None
    load = other_traffic(cluster.port)
    reports: list[dict[str, Any]] = []

    def at_each(phase: str) -> None:
        k = len(reports)
        node.stdin.write(f"batch b{k} {BATCH}\n")
        node.stdin.flush()
        line = node.stdout.readline()  # the script answers once every job settled
        assert line, f"the node script ended in {phase}: {errors.read_text()[-3000:]}"
        reports.append(json.loads(line))
        assert not load.problems(), "\n".join(load.problems())

    try:
        walk(cluster, at_each)
        node.stdin.write("end\n")
        node.stdin.flush()
        assert node.wait(20) == 0, errors.read_text()[-3000:]
    finally:
        load.stop()
        stop_process(node)
        node.stdin.close()
        node.stdout.close()
    assert not load.problems(), "\n".join(load.problems())
    fails = sum(1 for i in range(BATCH) if i % 10 == 0)
    retried = sum(1 for i in range(BATCH) if i % 3 == 0 and i % 10)
    for k, report in enumerate(reports):
        assert (report["completed"], report["failed"]) == (BATCH - fails, fails), report
        want = {f"b{k}-{i}": 2 if i % 10 == 0 or i % 3 == 0 else 1 for i in range(BATCH)}
        assert report["runs"] == want, report
        assert report["counts"] == {"waiting": 0, "active": 0, "delayed": 0}, report
    assert len(reports) == 6 and retried > 0
    only_on_owners(cluster)
