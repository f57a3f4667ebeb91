"""proxy.workers.supervisor: the two-step reload (every worker checks, then every worker applies
one generation) against fake workers."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass, field
from typing import Any

import pytest

from proxy.config.schema import parse_config
from proxy.workers.supervisor import Supervisor

CONFIG = "listen: 127.0.0.1:7777\nworkers: 3\npools: {main: {servers: [127.0.0.1:7001 r1]}}\n"


@dataclass
class FakeWorker:
    """A running worker that refuses with `refuse` and fails to apply when `fail_apply`."""

    index: int
    refuse: str = ""
    fail_apply: bool = False
    running: bool = True
    applied: list[int] = field(default_factory=list)
    terminated: bool = False

    async def check_reload(self, text: str) -> str:
        return self.refuse

    async def apply_reload(self, text: str, generation: int) -> tuple[bool, str]:
        self.applied.append(generation)
        return (False, "boom") if self.fail_apply else (True, f"generation {generation}")

    def terminate(self) -> None:
        self.terminated = True


@pytest.fixture
def supervisor() -> Any:
    sup = Supervisor(parse_config(CONFIG), CONFIG, None)
    yield sup
    shutil.rmtree(sup.run_dir)


def test_one_refusal_refuses_for_every_worker(supervisor: Supervisor) -> None:
    fakes = [FakeWorker(0), FakeWorker(1, refuse="keys waiting for repair"), FakeWorker(2)]
    supervisor.workers = fakes  # type: ignore[assignment]
    ok, message = asyncio.run(supervisor.reload_text(CONFIG + "slowlog_ms: 5\n"))
    assert not ok and message.startswith("worker 1: keys waiting for repair (")
    assert supervisor.generation == 1 and all(not w.applied for w in fakes)


def test_accepted_reload_is_applied_by_all_with_one_generation(supervisor: Supervisor) -> None:
    fakes = [FakeWorker(0), FakeWorker(1, fail_apply=True), FakeWorker(2, running=False)]
    supervisor.workers = fakes  # type: ignore[assignment]
    ok, message = asyncio.run(supervisor.reload_text(CONFIG + "slowlog_ms: 5\n"))
    assert (ok, message) == (True, "generation 2")
    assert [w.applied for w in fakes] == [[2], [2], []]  # a stopped worker starts on it later
    assert [w.terminated for w in fakes] == [False, True, False]  # restarted on the new config
    ok, message = asyncio.run(supervisor.reload_text("bogus: 1\n" + CONFIG))
    assert not ok and "bogus: unknown key" in message and supervisor.generation == 2
