"""Redis as a job queue and a message bus through the proxy, with an exact record of every item.

`Flow` runs threads, each with one redis-py client of its own (retries off: a dropped connection
is an error, never a silent reconnect):
- producers LPUSH items (unique strings) onto the queues `{qN}:in`;
- consumers take them: BLPOP, or BLMOVE into `{qN}:work` then LREM (an acknowledged job);
- a publisher PUBLISHes numbered messages on channels `ch:N`, and checks each PUBLISH reached
  both subscribers (its reply);
- two subscribers: one on every channel (RESP2), one on the pattern `ch:*` (RESP3);
- counter threads increment `cnt:X` with WATCH / GET / MULTI / SET / EXEC (redis-py
  `transaction()`, which retries when EXEC answers nil).
Every thread counts its operations (`progress`); `pause` holds producers, publisher and counters
(the consumers drain), for a quiet moment (a verify). `check` compares everything at the end.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis

from tests.support.loadgen import connect
from tests.support.processes import holds_for, wait_until

QUEUES = [f"{{q{i}}}:in" for i in range(6)]
CHANNELS = [f"ch:{i}" for i in range(8)]
COUNTERS = ["cnt:a", "cnt:b", "cnt:c", "cnt:d"]
PACE_S = 0.002  # producers and the publisher: a steady trickle, not a flood


def work_list(queue: str) -> str:
    return queue.replace(":in", ":work")


class Role(threading.Thread):
    """One client thread: `step` runs until stopped; errors end it and are kept."""

    def __init__(self, flow: Flow, name: str, protocol: int = 2) -> None:
        super().__init__(name=name, daemon=True)
        self.flow = flow
        self.client = connect(flow.port, protocol)
        self.ops = 0
        self.errors: list[str] = []
        self.held = False  # paused now (see Flow.pause)

    def run(self) -> None:
        try:
            while not self.flow.stop.is_set():
                if self.pausable and self.flow.paused.is_set():
                    self.held = True
                    time.sleep(0.01)
                    continue
                self.held = False
                self.step()
                self.ops += 1
        except Exception as exc:  # kept for the test's assertion
            self.errors.append(f"{self.name}: {type(exc).__name__}: {exc}")
        finally:
            self.client.close()

    pausable = True

    def step(self) -> None:
        raise NotImplementedError


class Producer(Role):
    def __init__(self, flow: Flow, name: str) -> None:
        super().__init__(flow, name)
        self.produced: list[bytes] = []

    def step(self) -> None:
        item = f"{self.name}:{self.ops}".encode()
        self.client.lpush(QUEUES[self.ops % len(QUEUES)], item)
        self.produced.append(item)
        time.sleep(PACE_S)


class Consumer(Role):
    pausable = False  # consumers drain while the others pause

    def __init__(self, flow: Flow, name: str, move: bool) -> None:
        super().__init__(flow, name)
        self.move = move
        self.consumed: list[bytes] = []

    def step(self) -> None:
        queue = QUEUES[self.ops % len(QUEUES)]
        if self.move:
            item = self.client.blmove(queue, work_list(queue), 0.05, "RIGHT", "LEFT")
            if item is not None:
                self.consumed.append(item)
                assert self.client.lrem(work_list(queue), 1, item) == 1
            return
        popped = self.client.blpop([queue], timeout=0.05)
        if popped is not None:
            self.consumed.append(popped[1])


class Publisher(Role):
    def __init__(self, flow: Flow, name: str, receivers: int) -> None:
        super().__init__(flow, name)
        self.receivers = receivers
        self.published: dict[bytes, list[bytes]] = {c.encode(): [] for c in CHANNELS}

    def step(self) -> None:
        channel = CHANNELS[self.ops % len(CHANNELS)]
        message = b"%d" % self.ops
        got = self.client.publish(channel, message)
        self.published[channel.encode()].append(message)
        if got != self.receivers:
            raise AssertionError(f"PUBLISH {channel} {message!r} reached {got} subscribers")
        time.sleep(PACE_S)


class Subscriber(Role):
    pausable = False

    def __init__(self, flow: Flow, name: str, protocol: int, pattern: bool) -> None:
        super().__init__(flow, name, protocol)
        self.pubsub: Any = self.client.pubsub(ignore_subscribe_messages=True)
        if pattern:
            self.pubsub.psubscribe("ch:*")
        else:
            self.pubsub.subscribe(*CHANNELS)
        self.received: dict[bytes, list[bytes]] = {c.encode(): [] for c in CHANNELS}

    def step(self) -> None:
        msg = self.pubsub.get_message(timeout=0.1)
        if msg is not None and msg["type"] in ("message", "pmessage"):
            self.received[msg["channel"]].append(msg["data"])

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.pubsub.close()


class Counting(Role):
    def __init__(self, flow: Flow, name: str) -> None:
        super().__init__(flow, name)
        self.done: Counter[str] = Counter()

    def step(self) -> None:
        key = COUNTERS[self.ops % len(COUNTERS)]

        def bump(pipe: Any) -> None:
            value = int(pipe.get(key) or 0)
            pipe.multi()
            pipe.set(key, value + 1)

        self.client.transaction(bump, key)
        self.done[key] += 1


class Flow:
    """Every role's thread on the proxy at `port`; see the module's docstring."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.paused = threading.Event()
        self.producers = [Producer(self, f"p{i}") for i in range(2)]
        self.consumers = [Consumer(self, f"c{i}", move=i % 2 == 1) for i in range(3)]
        self.subscribers = [
            Subscriber(self, "s-channels", 2, pattern=False),
            Subscriber(self, "s-pattern", 3, pattern=True),
        ]
        self.publisher = Publisher(self, "pub", receivers=len(self.subscribers))
        self.counters = [Counting(self, f"t{i}") for i in range(2)]
        self.roles: list[Role] = [
            *self.producers,
            *self.consumers,
            *self.subscribers,
            self.publisher,
            *self.counters,
        ]

    def start(self) -> Flow:
        for s in self.subscribers:
            s.start()
        with connect(self.port, 2) as c:
            wait_until(
                lambda: (
                    c.pubsub_numpat() == 1 and all(n == 1 for _, n in c.pubsub_numsub(*CHANNELS))
                ),
                10,
                "the subscriptions",
            )
        for role in self.roles:
            if not role.is_alive():
                role.start()
        return self

    def progress(self, n: int) -> Callable[[], bool]:
        """A predicate: every producing role did `n` more operations (or one has died)."""
        busy = [*self.producers, self.publisher, *self.counters]
        marks = [(r, r.ops + n) for r in busy]
        return lambda: all(r.ops >= m or not r.is_alive() for r, m in marks)

    def problems(self) -> list[str]:
        return [e for r in self.roles for e in r.errors] + [
            f"{r.name}: stopped" for r in self.roles if not r.is_alive() and not self.stop.is_set()
        ]

    def pause(self, queues_empty: Callable[[], bool]) -> None:
        """Hold producers, publisher and counters; return once the consumers emptied the queues
        and every subscriber has every message."""
        self._hold()
        wait_until(queues_empty, 20, "the consumers to empty the queues")
        wait_until(self._all_received, 20, "every message received")

    def _hold(self) -> None:
        self.paused.set()
        held = [*self.producers, self.publisher, *self.counters]
        wait_until(lambda: all(r.held or not r.is_alive() for r in held), 10, "roles paused")

    def resume(self) -> None:
        self.paused.clear()

    def _all_received(self) -> bool:
        want = {ch: len(m) for ch, m in self.publisher.published.items()}
        return all({ch: len(m) for ch, m in s.received.items()} == want for s in self.subscribers)

    def finish(self) -> None:
        """Stop producing, let every message arrive (and nothing more), then stop every thread."""
        self._hold()
        wait_until(self._all_received, 20, "every message received")
        counts = self._received_counts()
        holds_for(lambda: self._received_counts() == counts, 0.3, self._repeats())
        self.stop.set()
        for role in self.roles:
            role.join(15)
            assert not role.is_alive(), f"{role.name} did not stop"

    def _repeats(self) -> str:
        out = []
        for s in self.subscribers:
            for channel, got in s.received.items():
                again = [m for m, n in Counter(got).items() if n > 1]
                if again:
                    out.append(f"{s.name} {channel!r}: {again[:5]} of {len(got)}")
        return "messages received twice: " + "; ".join(out)

    def _received_counts(self) -> list[int]:
        return [sum(len(m) for m in s.received.values()) for s in self.subscribers]

    def check(self, leftover: list[bytes], counters: dict[str, int]) -> None:
        """Each item produced was consumed exactly once (`leftover`: still queued at the end);
        every subscriber got every message once, in order; every counter equals its EXECs."""
        produced = Counter(i for p in self.producers for i in p.produced)
        consumed = Counter(i for c in self.consumers for i in c.consumed) + Counter(leftover)
        assert sum(produced.values()) > 0
        lost = produced - consumed
        extra = consumed - produced
        assert not lost and not extra, f"lost {sorted(lost)[:10]}, duplicated {sorted(extra)[:10]}"
        for s in self.subscribers:
            for channel, messages in self.publisher.published.items():
                got = s.received[channel]
                assert got == messages, (
                    f"{s.name} on {channel!r}: {len(got)} received, {len(messages)} published;"
                    f" missing {sorted(set(messages) - set(got))[:5]},"
                    f" repeated {[m for m, n in Counter(got).items() if n > 1][:5]}"
                )
        done: Counter[str] = Counter()
        for t in self.counters:
            done.update(t.done)
        assert counters == dict(done), (counters, dict(done))


def read_counters(client: redis.Redis) -> dict[str, int]:
    return {k: int(v) for k in COUNTERS if (v := client.get(k)) is not None}
