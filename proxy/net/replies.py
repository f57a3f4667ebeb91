"""The reply side of one client: its slots in request order, flushed from the head, within a budget.

Replies leave in request order: a list of slots, written from the head while the head is
answered (pipelined replies keep their order whatever backend answers first). The client's memory
budget (client.max_output_buffer_bytes) counts its unread replies, the answered ones queued behind
an unanswered head and those still in flight: requests in flight are capped so that their replies
fit in half of it (at the size of the client's replies lately), and a client that holds more than
the budget anyway is closed, as Redis does past client-output-buffer-limit.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import Final, Protocol

from proxy import errors
from proxy.commands.session import Session
from proxy.net.metrics import ProxyMetrics, latency_bucket
from proxy.net.slot import VIEW_MARK, ReplyOwner, Slot

log = logging.getLogger("shardproxy.client")
slow_log = logging.getLogger("shardproxy.slowlog")
_clock: Final = perf_counter  # a static in the compiled build, not a lookup in the globals

# A new client's replies are taken to be big until seen (a slow start: at the default budget, 31
# requests in flight; a first burst of 2 MB GETs must not put 1 GB on a shared connection) ...
_FIRST_REPLY_EST: Final = 1024.0 * 1024
_WARMUP_FLUSHES: Final = 16  # ... and its first flushes teach the estimate at once (halving it)
_EST_DECAY: Final = 0.5  # how fast the reply size estimate forgets a big reply: halved ...
_DECAY_EVERY: Final = 31  # ... every 32 flushes without a bigger one (a bigger one counts at once)


class ReplyHost(Protocol):
    metrics: ProxyMetrics


class ReplyQueue(ReplyOwner):
    """Slots in request order and the memory budget; ClientConnection is the request side."""

    takes_views = True  # replies are only written out (bytes or memoryview alike)

    def __init__(
        self, host: ReplyHost, session: Session, budget: int, max_pending: int, slow_ms: float
    ) -> None:
        super().__init__()
        self.metrics = host.metrics
        self.session = session
        self.pending: list[Slot] = []  # a list: deque's methods are generic calls when compiled
        self._views: dict[Slot, bytearray] = {}  # big replies kept as read (keep_view)
        # Replies not to write (CLIENT REPLY OFF/SKIP): dropped when they reach the head.
        self.silent: set[Slot] = set()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._budget = budget
        self._max_pending = max_pending
        # A running estimate of this client's reply size (bytes), the largest lately: requests
        # in flight are capped at half the budget's worth of such replies (see _learn_replies).
        # It starts high, so a client's first burst is bounded until its replies are seen.
        self._reply_est = _FIRST_REPLY_EST
        self._limit = 0  # requests in flight allowed now
        self._flushes = 0
        self._set_limit()
        self.write_paused = False  # the transport's buffer is over its high-water mark
        self._big_bytes = 1 << 62  # replies this big are reported (on_big_reply); never here
        self._slow_s = slow_ms / 1000 if slow_ms > 0 else float("inf")

    def flush(self) -> None:
        """Write every answered reply at the head of the queue, in order."""
        self.dirty = False
        pending = self.pending
        if not pending or pending[0].reply is None:
            return
        if self.closed:
            self.drop_owed()
            return
        out: list[bytes | bytearray] = []
        now = _clock()
        slow_s = self._slow_s
        budget = self._budget
        big_bytes = self._big_bytes
        biggest = 0
        silent = self.silent
        taken = 0  # slots at the head answered, removed at once after the loop
        for slot in pending:
            reply = slot.reply
            if reply is None:
                break
            taken += 1
            data: bytes | bytearray = reply
            if reply is VIEW_MARK:
                data = self._views.pop(slot)
            if silent and slot in silent:
                silent.discard(slot)
                continue
            size = len(data)
            if size > biggest:
                biggest = size
            if size >= big_bytes:
                self.on_big_reply(slot, size)
            out.append(data)
            stats = slot.stats
            if stats is not None:
                elapsed = now - slot.start
                stats.buckets[latency_bucket(elapsed)] += 1  # observe(), inlined
                stats.total += elapsed
                first = reply[0]
                if first == 45 or first == 33:  # - or RESP3 !
                    stats.errors += 1
                if elapsed >= slow_s:
                    self._log_slow(stats.label, elapsed)
        del pending[:taken]
        transport = self.transport
        assert transport is not None
        if not out:  # every reply answered was one not to write
            self.after_flush(transport)
            return
        if biggest > budget:  # rare: a reply bigger than the whole budget is refused
            out = [errors.reply_over_budget(len(r)) if len(r) > budget else r for r in out]
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        self._flushes += 1
        flushes = self._flushes
        if biggest > self._reply_est or not flushes & _DECAY_EVERY or flushes < _WARMUP_FLUSHES:
            self._learn_replies(biggest)
        # Over the budget means over the write buffer's high-water mark (a quarter of it) too.
        if self.write_paused and transport.get_write_buffer_size() > budget:
            self._over_budget(transport)
            return
        self.after_flush(transport)

    def keep_view(self, slot: Slot, reply: bytearray) -> bool:
        """A big reply is written out as it was read, not copied (see ReplyOwner); one owed to
        a client already closed is dropped (its slots are gone: nothing would take it)."""
        if not self.closed:
            self._views[slot] = reply
        return True

    def drop_owed(self) -> None:
        """Forget every reply owed or queued (replies still owed are dropped as they arrive)."""
        self.pending.clear()
        self._views.clear()

    def after_flush(self, transport: asyncio.Transport) -> None:
        """What the request side does once replies went out (ClientConnection: resume)."""

    def on_big_reply(self, slot: Slot, size: int) -> None:
        """A reply of at least `_big_bytes` (bigkeys.threshold_bytes) is going out."""

    def _learn_replies(self, biggest: int) -> None:
        """Fold the biggest reply of a flush into the estimate; cap requests in flight so that
        their replies fit in half the budget (the other half: the transport's buffer)."""
        est = self._reply_est * _EST_DECAY
        self._reply_est = biggest if biggest > est else est
        self._set_limit()

    def _set_limit(self) -> None:
        est = self._reply_est
        self._limit = max(1, min(self._max_pending, int((self._budget >> 1) / (est + 64))))

    def reject(self, reply: bytes, label: str) -> None:
        """Answer `reply` in its place in the queue, counted as a rejected `label`."""
        self.metrics.command_stats(label).rejected += 1
        slot = Slot(self, None, 0.0)
        slot.reply = reply
        self.pending.append(slot)

    # -- the proxy-wide memory guard (proxy.net.memory.Holder) -----------------------------
    def held_bytes(self) -> int:
        """What this client makes the proxy hold: unread replies in its transport and replies
        owed (at the estimated size of its replies)."""
        transport = self.transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        return buffered + int(len(self.pending) * self._reply_est)

    def evict(self, reason: str) -> None:
        self.metrics.client_errors_total.labels("memory").inc()
        log.warning("client %d %s closed: %s", self.session.client_id, self.session.peer, reason)
        self.abort()

    def _over_budget(self, transport: asyncio.Transport) -> None:
        """The client holds more than its budget of replies it does not read: close it, as
        Redis does past client-output-buffer-limit, and drop what is still owed to it."""
        self.metrics.client_errors_total.labels("memory").inc()
        log.warning(
            "client %d %s closed: %d bytes of replies unread, over its budget of %d bytes "
            "(client.max_output_buffer_bytes)",
            self.session.client_id,
            self.session.peer,
            transport.get_write_buffer_size(),
            self._budget,
        )
        self.abort()

    def abort(self) -> None:
        """Close at once, dropping the replies owed (they are discarded as they arrive)."""
        self.closed = True
        self.drop_owed()
        if self.transport is not None:
            self.transport.abort()

    def _log_slow(self, label: str, elapsed_s: float) -> None:
        slow_log.warning(
            "slow command: %s took %.1f ms (client %d %s)",
            label,
            elapsed_s * 1000,
            self.session.client_id,
            self.session.peer,
        )
