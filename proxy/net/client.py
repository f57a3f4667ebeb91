"""One client connection: parse requests, route them, write replies back in request order.

Request path (all synchronous callbacks, no task per request):

    data_received --RequestReader--> [args, ...] --dispatch--> Slot appended to self.pending
        single key : router.backend_for(key).send(...)            (the hot path)
        multi/fan  : routing.plan_* -> forwarder.send_plan        (Gather merges into one slot)
        huge multi : slicer.send_sliced, a slice per loop iteration; later requests wait
        local      : local.run_local -> slot filled at once
    BackendConnection.data_received fills slots -> owner.flush() -> replies leave from the head
    of self.pending while the head is answered, so pipelined replies keep request order.

Back-pressure: reading from the client pauses while its transport's write buffer is above the
high-water mark or it has more than max_pending_requests unanswered requests.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections import deque
from time import perf_counter
from typing import Protocol, cast

from proxy import errors
from proxy.codec.request import RequestReader
from proxy.codec.resp import OK, ProtocolError, encode_request
from proxy.commands.checks import RESERVED_PREFIX
from proxy.commands.local import ServerView, Session, run_local, wants_keyspace
from proxy.commands.spec import PLAIN, CommandSpec, Kind, arity_error, lookup, unknown_error
from proxy.config.schema import ClientConfig
from proxy.net.connection import Slot
from proxy.net.dualwrite import dispatch_migrating
from proxy.net.forwarder import send_info, send_plan
from proxy.net.metrics import LATENCY_BUCKETS_S, CommandStats, ProxyMetrics
from proxy.net.pool import Router
from proxy.net.slicer import SlicedRequest, SliceRequest, send_sliced, wants_slices
from proxy.net.stream import BulkStream, stream_head
from proxy.routing.plan import plan_fanout, plan_multi, plan_same_backend, refusal_before_routing

log = logging.getLogger("shardproxy.client")
slow_log = logging.getLogger("shardproxy.slowlog")

_SINGLE = Kind.SINGLE
# Fast-path entry of a command name: key index, fewest and most arguments, stats.
_Known = tuple[int, int, int, CommandStats | None]
_NOT_FAST: _Known = (0, 1, 0, None)  # no argument count fits
_PRE_AUTH = frozenset({"auth", "hello", "quit", "reset"})
_FIRST_REPLY_EST = 65536.0  # bytes: a new client's replies are taken to be big until seen
_YIELD_BYTES = 256 * 1024  # a request under way this big yields the loop between its reads
_EST_DECAY = 0.9  # per flush: how fast the reply size estimate forgets a big reply


class ClientHost(ServerView, Protocol):
    """What a client connection needs from the server that accepted it."""

    router: Router
    client_config: ClientConfig
    max_clients: int  # client_config.max_connections, lowered to fit the open files limit
    allow_flush: bool
    slowlog_ms: float
    clients: set[ClientConnection]

    metrics: ProxyMetrics

    def next_client_id(self) -> int: ...


class ClientConnection(asyncio.Protocol):
    takes_views = True  # replies are only written out (bytes or memoryview alike)

    def __init__(self, host: ClientHost) -> None:
        self.host = host
        self.client_id = host.next_client_id()
        self.pending: deque[Slot] = deque()
        self.dirty = False
        self.transport: asyncio.Transport | None = None
        self.reader = RequestReader()
        self.reader.stream_gate = self._streamable
        self.session = Session(self.client_id, "", host.client_config.password)
        self.closed = False
        self._write_paused = False
        self._pending_paused = False
        self._throttled = False  # the proxy-wide memory guard stopped reading from this client
        # A big value streamed through (proxy.stream): later requests wait for its reply.
        self._stream: BulkStream | None = None
        self._stream_paused = False  # the stream's backend connection is full, or it waits
        self._hold = False  # dispatch nothing now: writes paused, or a stream's reply awaited
        self._yielding = False  # reading paused until the next loop iteration (_yield_reading)
        cfg = host.client_config
        self._max_pending = cfg.max_pending_requests
        # Memory budget: replies in the transport, answered in the queue and still in flight.
        self._budget = cfg.max_output_buffer_bytes
        # A running estimate of this client's reply size (bytes), the largest lately: requests
        # in flight are capped at half the budget's worth of such replies (see _learn_replies).
        # It starts high, so a client's first burst is bounded until its replies are seen.
        self._reply_est = _FIRST_REPLY_EST
        self._limit = 0  # requests in flight allowed now
        self._sliced: SlicedRequest | None = None  # a huge request still being sent
        self._learn_replies(0)
        # Cache of host.metrics.command_stats by command name (CommandSpec's own hash is slow).
        self._stats: dict[str, CommandStats] = {}
        # The fast path's view of each command name this client sent (see _learn).
        self._known: dict[bytes, _Known] = {}
        # Requests parsed but not yet dispatched (over max_pending_requests): resumed by flush.
        self._backlog: tuple[list[list[bytes]], list[bytes], int, ProtocolError | None] | None
        self._backlog = None
        self.last_active = perf_counter()  # the clock of _process's `now`
        slow_ms = host.slowlog_ms
        self._slow_s = slow_ms / 1000 if slow_ms > 0 else float("inf")

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.session.peer = f"{peer[0]}:{peer[1]}"
        if len(self.host.clients) >= self.host.max_clients:
            self.host.metrics.client_errors_total.labels("limit").inc()
            transport.write(errors.max_clients())
            transport.close()
            self.closed = True
            return
        high = self._budget >> 2  # reading pauses here; the client is closed at the budget
        transport.set_write_buffer_limits(high=high, low=high // 2)
        self.host.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stream is not None:
            self._stream.cancel()
        self.closed = True
        self.pending.clear()  # replies still owed by backends are dropped when they arrive
        self.host.clients.discard(self)

    def eof_received(self) -> bool:
        """Half-close: answer what was asked, then close (as Redis does)."""
        self.close()
        return True

    def pause_writing(self) -> None:
        self._write_paused = self._hold = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._hold = self._stream is not None
        if self._backlog is not None:
            asyncio.get_running_loop().call_soon(self._resume_backlog)
        else:
            self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self.closed or self.session.closing:
            return
        failure: ProtocolError | None = None
        reader = self.reader
        reader.authed = self.session.authed  # Redis's pre-AUTH limits apply until then
        try:
            requests = reader.feed(data)
        except ProtocolError as exc:
            failure = exc
            requests = exc.requests
        else:
            if len(requests) == 1:  # unpipelined: _process for one request, its loop unrolled
                args = requests[0]
                key, lowest, highest, stats = self._known.get(args[0]) or self._learn(args[0])
                router = self.host.router
                pending = self.pending
                if (
                    router.fast
                    and lowest <= len(args) <= highest
                    and self.session.direct
                    and len(pending) < self._limit
                    and not self._hold
                    and not args[key].startswith(RESERVED_PREFIX)  # refused by _dispatch
                ):
                    self.last_active = now = perf_counter()
                    slot = Slot(self, stats, now)
                    pending.append(slot)
                    backend = router.route_backends[router.node_for(args[key])]
                    raw = self.reader.raws[0] or encode_request(args)  # b"": not kept (see feed)
                    backend.send(self.session.proto, self.client_id, raw, slot)
                    if pending[0].reply is not None:  # a backend down answers at once
                        self.flush()
                    return
        self._process(requests, reader.raws, 0, failure)
        if reader.stream_args is not None and self._stream is None and not self.closed:
            self._start_stream()
        if reader.has_buffered():
            self._drain_buffered()
        if reader.buffered_bytes() > _YIELD_BYTES:
            self._yield_reading()

    def _yield_reading(self) -> None:
        """A huge request is under way: read its next chunk in the next loop iteration, not
        in this one (libuv reads a ready socket up to 32 times per iteration: 8 MB of a 1M-key
        MGET parsed in one go would hold every other client for a second)."""
        if not self._yielding:
            self._yielding = True
            self._update_reading()
            asyncio.get_running_loop().call_soon(self._end_yield)

    def _end_yield(self) -> None:
        self._yielding = False
        self._update_reading()

    def _drain_buffered(self) -> None:
        """Before AUTH the reader hands out one request per feed, as Redis parses one and runs
        it before the next: feed on while it holds more and this client may go on."""
        reader = self.reader
        while reader.has_buffered() and not self.closed and not self.session.closing:
            if self._backlog is not None or self._pending_paused:
                return  # resumed by _resume_backlog
            reader.authed = self.session.authed
            try:
                requests = reader.feed(b"")
            except ProtocolError as exc:
                self._process(exc.requests, reader.raws, 0, exc)
                return
            self._process(requests, reader.raws, 0, None)

    def _process(
        self,
        requests: list[list[bytes]],
        raws: list[bytes],
        start: int,
        failure: ProtocolError | None,
    ) -> None:
        """Dispatch requests[start:]; past max_pending_requests unanswered, keep the rest as a
        backlog and stop reading until the client has taken half of its replies."""
        router = self.host.router
        session = self.session
        pending = self.pending
        proto = session.proto
        cid = self.client_id
        known = self._known
        fast = router.fast and session.direct
        route_backends = router.route_backends
        node_for = router.node_for
        limit = self._limit
        self.last_active = now = perf_counter()  # the requests of one read arrived together
        for i in range(start, len(requests)):
            if len(pending) >= limit or self._hold:
                self._backlog = (requests, raws, i, failure)
                self._pending_paused = True
                self._update_reading()
                self.flush()
                return
            args = requests[i]
            entry = known.get(args[0]) or self._learn(args[0])
            key, lowest, highest, stats = entry
            if (
                fast
                and lowest <= len(args) <= highest
                and not args[key].startswith(RESERVED_PREFIX)  # refused by _dispatch
            ):
                slot = Slot(self, stats, now)
                pending.append(slot)
                raw = raws[i] or encode_request(args)  # b"": not kept (see RequestReader.feed)
                route_backends[node_for(args[key])].send(proto, cid, raw, slot)
            else:
                self._dispatch(args, router)
                if session.closing:
                    break
                if self._sliced is not None:  # sent slice by slice: the rest waits for it
                    self._wait_for_slices(requests, raws, i + 1, failure)
                    return
                proto = session.proto
                fast = router.fast and session.direct
        self._backlog = None
        if failure is not None and not session.closing:
            self._fail_protocol(str(failure))
            return
        if pending and pending[0].reply is not None:  # answered by the proxy itself
            self.flush()

    def _new_stats(self, spec: CommandSpec) -> CommandStats:
        stats = self._stats[spec.name] = self.host.metrics.command_stats(spec.label)
        return stats

    def _learn(self, name: bytes) -> _Known:
        """What the fast path needs to know of a command name: for a single-key command (as
        typed: `GET` or `get`), its key's index, the argument counts it takes and its stats;
        anything else gets an entry no request fits, so it goes to _dispatch."""
        spec = PLAIN.get(name)
        if spec is None:
            return _NOT_FAST  # unknown or mixed case: not remembered (names are client input)
        if spec.kind is not _SINGLE:
            entry = _NOT_FAST
        else:
            arity = spec.arity
            highest = arity if arity > 0 else 1 << 30
            stats = self._stats.get(spec.name) or self._new_stats(spec)
            entry = (spec.first_key, abs(arity), highest, stats)
        self._known[name] = entry
        return entry

    # -- dispatch (everything but the single-key fast path) ------------------------------
    def _dispatch(self, args: list[bytes], router: Router) -> None:
        spec = lookup(args)
        if spec is None:
            self._reject(unknown_error(args), "unknown")
            return
        if not self.session.authed and spec.name not in _PRE_AUTH:
            self.host.metrics.client_errors_total.labels("auth").inc()
            self._reject(errors.noauth(), spec.label)
            return
        if not spec.arity_ok(len(args)) or (
            spec.kind is Kind.MULTI and (len(args) - 1) % spec.key_step
        ):
            self._reject(arity_error(spec), spec.label)
            return
        if self.session.tx_refused:
            refusal = self._refuse_in_tx(spec)
            if refusal is not None:
                self._reject(refusal, spec.label)
                return
        # A huge request's keys are checked slice by slice (slicer.SlicedRequest.check_next).
        refusal = None if wants_slices(spec, args) else refusal_before_routing(spec, args)
        if refusal is not None:
            self._reject(refusal, spec.label)
            return
        stats = self._stats.get(spec.name) or self._new_stats(spec)
        slot = Slot(self, stats, perf_counter())
        self.pending.append(slot)
        problem = self._route(spec, args, router, slot)
        if problem is not None:
            # Refused by the proxy: counted as rejected, not as a command that ran.
            slot.reply = problem
            slot.stats = None
            stats.rejected += 1

    def _refuse_in_tx(self, spec: CommandSpec) -> bytes | None:
        """After a refused MULTI: nothing runs until EXEC or DISCARD ends the would-be
        transaction (QUIT and RESET still work), so a transaction is never partly applied."""
        name = spec.name
        if name == "exec":
            self.session.set_tx_refused(False)
            return errors.execabort()
        if name == "discard":
            self.session.set_tx_refused(False)
            return OK
        if name in ("quit", "reset"):
            return None
        if name == "multi":
            return errors.nested_multi()
        if name == "watch":
            return errors.watch_in_multi()
        return errors.refused_in_multi(name)

    def _route(
        self, spec: CommandSpec, args: list[bytes], router: Router, slot: Slot
    ) -> bytes | None:
        """Send `args` on its way (the reply lands in `slot`), or return the refusal to answer."""
        kind = spec.kind
        proto = self.session.proto
        if kind is Kind.LOCAL:
            if spec.name == "command" or spec.name.startswith("command|"):
                router.route_backends[0].send(proto, self.client_id, encode_request(args), slot)
            elif spec.name == "info" and wants_keyspace(args):
                send_info(args, router, slot, self.host, proto)
            else:
                slot.reply = run_local(spec, args, self.session, self.host)
                if slot.reply[:10] == b"-WRONGPASS":
                    self.host.metrics.client_errors_total.labels("auth").inc()
            return None
        if kind is Kind.PINNED:
            if spec.name == "multi":
                self.session.set_tx_refused(True)
                return errors.multi_refused()
            return errors.not_supported_yet(spec.name)
        if kind is Kind.DENIED:
            return errors.denied(spec.name)
        if spec.needs_flush_permission and not self.host.allow_flush:
            return errors.flush_disabled(spec.name)
        if wants_slices(spec, args):
            request = SliceRequest(spec, args, proto, self.client_id)
            self._sliced = send_sliced(request, slot, self, self.host)
            return None
        if not router.fast:
            return dispatch_migrating(spec, args, router, slot, proto, self.client_id)
        if kind is Kind.SINGLE:
            positions = spec.key_positions(args)
            backend = router.backend_for(args[positions[0]] if positions else args[1])
            backend.send(proto, self.client_id, encode_request(args), slot)
            return None
        if kind is Kind.MULTI:
            plan = plan_multi(spec, args, router.route)
        elif kind is Kind.SAME_BACKEND:
            plan = plan_same_backend(spec, args, [router.route])
        else:
            plan = plan_fanout(spec, args, router.route)
        if plan.error is not None:
            return plan.error
        send_plan(plan, router, slot, proto, self.client_id)
        return None

    def _reject(self, reply: bytes, label: str) -> None:
        self.host.metrics.command_stats(label).rejected += 1
        slot = Slot(self, None, 0.0)
        slot.reply = reply
        self.pending.append(slot)

    # -- replies ---------------------------------------------------------------------------
    def flush(self) -> None:
        """Write every answered reply at the head of the queue, in order."""
        self.dirty = False
        pending = self.pending
        if not pending or pending[0].reply is None:
            return
        if self.closed:
            pending.clear()
            return
        out: list[bytes] = []
        now = perf_counter()
        slow_s = self._slow_s
        budget = self._budget
        biggest = 0
        while pending:
            slot = pending[0]
            reply = slot.reply
            if reply is None:
                break
            size = len(reply)
            if size > biggest:
                biggest = size
            if size > budget:
                reply = errors.reply_over_budget(size)
            out.append(reply)
            pending.popleft()
            stats = slot.stats
            if stats is not None:
                elapsed = now - slot.start
                stats.buckets[bisect_left(LATENCY_BUCKETS_S, elapsed)] += 1  # observe(), inlined
                stats.total += elapsed
                if reply[0] in (45, 33):  # - or RESP3 ! (codec.resp.is_error, inlined)
                    stats.errors += 1
                if elapsed >= slow_s:
                    self._log_slow(stats.label, elapsed)
        transport = self.transport
        assert transport is not None
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self._stream is not None and pending and pending[0] is self._stream.slot:
            self._stream.at_head()
        self._learn_replies(biggest)
        if transport.get_write_buffer_size() > self._budget:
            self._over_budget(transport)
            return
        if self.session.closing and not pending and self._backlog is None:
            transport.close()
            self.closed = True
        elif self._pending_paused and not self._hold and len(pending) <= self._limit // 2:
            if self._backlog is not None:
                # Next loop iteration: no recursion however long the backlog of local replies.
                asyncio.get_running_loop().call_soon(self._resume_backlog)
            else:
                self._pending_paused = False
                self._update_reading()

    def _learn_replies(self, biggest: int) -> None:
        """Fold the biggest reply of a flush into the estimate; cap requests in flight so that
        their replies fit in half the budget (the other half: the transport's buffer)."""
        est = self._reply_est * _EST_DECAY
        if biggest > est:
            est = biggest
        self._reply_est = est
        if self._sliced is not None:
            self._limit = 0  # see _wait_for_slices
        else:
            self._limit = max(1, min(self._max_pending, int((self._budget >> 1) / (est + 64))))

    # -- big values streamed through (proxy.stream) ---------------------------------------
    def _streamable(self, head: list[bytes]) -> bool:
        """RequestReader.stream_gate: may the big last argument after `head` be streamed?
        Only a single-key command on the fast path (no migration, no refused MULTI), whose
        key is in `head`; anything else is assembled and dispatched as usual."""
        if not (self.session.direct and self.host.router.fast):
            return False
        spec = lookup(head)
        if spec is None or spec.kind is not Kind.SINGLE or not spec.arity_ok(len(head) + 1):
            return False
        key = spec.first_key
        return 0 < key < len(head) and not head[key].startswith(RESERVED_PREFIX)

    def _start_stream(self) -> None:
        """The reader stopped at a streamed value: its request takes its place in the queue;
        its head goes out once the requests before it are answered (BulkStream.at_head)."""
        reader = self.reader
        head = reader.stream_args
        assert head is not None
        spec = lookup(head)
        assert spec is not None
        stats = self._stats.get(spec.name) or self._new_stats(spec)
        slot = Slot(self, stats, perf_counter())
        self.pending.append(slot)
        router = self.host.router
        backend = router.route_backends[router.node_for(head[spec.first_key])]
        stream = BulkStream(self, backend, self.session.proto, stream_head(head, reader), slot)
        self._stream = stream
        self._hold = True
        reader.begin_stream(stream)
        if self.pending and self.pending[0] is slot:
            stream.at_head()
        try:
            requests = reader.feed(b"")  # the value's first bytes, and what followed it
        except ProtocolError as exc:
            self._process(exc.requests, reader.raws, 0, exc)
            return
        if requests:
            self._process(requests, reader.raws, 0, None)

    def hold_reading(self, on: bool) -> None:
        self._stream_paused = on
        self._update_reading()

    def on_stream_done(self) -> None:
        """The streamed request is answered and its value all sent: go on with the rest."""
        self._stream = None
        self._stream_paused = False
        self._hold = self._write_paused
        if self._backlog is not None or self.reader.stream_args is not None:
            self._pending_paused = True
            asyncio.get_running_loop().call_soon(self._resume_stream_backlog)
        else:
            self._update_reading()

    def _resume_stream_backlog(self) -> None:
        if self._backlog is not None:
            self._resume_backlog()
        elif not self.closed and self._stream is None and self.reader.stream_args is not None:
            self._pending_paused = False
            self._start_stream()
            self._update_reading()

    # -- the proxy-wide memory guard (proxy.memory.Holder) ----------------------------------
    def held_bytes(self) -> int:
        """What this client makes the proxy hold: unread replies in its transport, requests
        not yet complete, and replies owed (at the estimated size of its replies)."""
        transport = self.transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        return buffered + self.reader.buffered_bytes() + int(len(self.pending) * self._reply_est)

    def throttle(self, on: bool) -> None:
        self._throttled = on
        self._update_reading()

    def evict(self, reason: str) -> None:
        self.host.metrics.client_errors_total.labels("memory").inc()
        log.warning("client %d %s closed: %s", self.client_id, self.session.peer, reason)
        self._abort()

    def _over_budget(self, transport: asyncio.Transport) -> None:
        """The client holds more than its budget of replies it does not read: close it, as
        Redis does past client-output-buffer-limit, and drop what is still owed to it."""
        self.host.metrics.client_errors_total.labels("memory").inc()
        log.warning(
            "client %d %s closed: %d bytes of replies unread, over its budget of %d bytes "
            "(client.max_output_buffer_bytes)",
            self.client_id,
            self.session.peer,
            transport.get_write_buffer_size(),
            self._budget,
        )
        self._abort()

    def _abort(self) -> None:
        """Close at once, dropping the replies owed (they are discarded as they arrive)."""
        self.closed = True
        self.pending.clear()
        self._backlog = None
        if self.transport is not None:
            self.transport.abort()

    def _wait_for_slices(
        self,
        requests: list[list[bytes]],
        raws: list[bytes],
        start: int,
        failure: ProtocolError | None,
    ) -> None:
        """A huge request is being sent slice by slice: no later request may overtake it.
        Requests already read wait as the backlog; while there are none, reading goes on (so
        a client that goes away is seen), but no request fits under a limit of 0 in flight,
        so the next ones read become the backlog (_process) until on_slices_sent."""
        self._limit = 0
        if start < len(requests) or failure is not None:
            self._backlog = (requests, raws, start, failure)
            self._pending_paused = True
            self._update_reading()
        else:
            self._backlog = None
        self.flush()

    def on_slices_sent(self) -> None:
        """The last slice of a huge request is sent: the requests after it may go."""
        self._sliced = None
        self._learn_replies(0)  # restores the limit
        if self._backlog is not None:
            self._resume_backlog()
        elif self._pending_paused:
            self._pending_paused = False
            self._update_reading()

    def _resume_backlog(self) -> None:
        backlog = self._backlog
        if self.closed or backlog is None or self._sliced is not None:
            return
        self._pending_paused = False
        self._process(*backlog)  # may pause again
        if self._backlog is None and self.reader.stream_args is not None and self._stream is None:
            self._start_stream()
        if self.reader.has_buffered():
            self._drain_buffered()
        if not self._pending_paused:
            self._update_reading()

    def _log_slow(self, label: str, elapsed_s: float) -> None:
        slow_log.warning(
            "slow command: %s took %.1f ms (client %d %s)",
            label,
            elapsed_s * 1000,
            self.client_id,
            self.session.peer,
        )

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if (
            self._write_paused
            or self._pending_paused
            or self._throttled
            or self._stream_paused
            or self._yielding
            or self._backlog is not None
        ):
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _fail_protocol(self, detail: str) -> None:
        self.host.metrics.client_errors_total.labels("protocol").inc()
        self._reject(errors.protocol_error(detail), "unknown")
        self.session.closing = True
        self.flush()

    def close(self) -> None:
        """Close after writing the replies already owed (graceful drain)."""
        self.session.closing = True
        if not self.pending and self._backlog is None and self.transport is not None:
            self.transport.close()
            self.closed = True
