"""One client connection, the request side: read requests, dispatch them, keep their order.

A request's walk (all synchronous callbacks, no task per request):

    data_received --codec/request.RequestReader--> [args, ...]
      single key, no migration : the fast path below: ring lookup, Backend.send (it stands in
                                 for dispatch's send_keyed, measured to be worth inlining)
      anything else            : net/dispatch.py, a handler per command kind:
          keyed   -> routing/plan.plan (a dual plan during a migration) -> net/dualwrite
                     (per-key fence, secondary write, shadow reads) -> net/forwarder.send_plan
          huge    -> net/slicer: a slice per loop iteration; later requests wait
          local   -> commands/local.run_local: the slot is filled at once
      big value (>= 1 MiB last)  : net/stream.BulkStream, a connection of its own
      blocking (BLPOP, XREAD BLOCK): net/blocking.BlockingCall, a connection of its own; sent
                                 once at the head, later requests held until its reply
    net/connection.BackendConnection fills slots -> Slot.owner.flush() -> net/replies.ReplyQueue
    writes from the head of `pending` while the head is answered: replies keep request order;
    fan-out replies are merged by routing/merge.py first (net/forwarder.Gather).

Back-pressure: reading from the client pauses while its replies are unread past a quarter of its
budget, it has more requests in flight than its budget allows (ReplyQueue), a stream or slices
are under way, or the memory guard throttles it; requests already read wait as the backlog.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Final, Protocol, cast

from proxy import errors
from proxy.codec.request import RequestReader
from proxy.codec.resp import ProtocolError, encode_request
from proxy.commands.checks import RESERVED_PREFIX
from proxy.commands.session import Session
from proxy.commands.spec import PLAIN, CommandSpec
from proxy.commands.users import Users
from proxy.config.schema import ClientConfig
from proxy.net.allowlist import peer_allowed
from proxy.net.blocking import BlockingCall, HeldCall
from proxy.net.defence import send_defended
from proxy.net.dispatch import NOT_FAST, DispatchHost, Known, dispatch, fast_entry
from proxy.net.hotkeys import NEVER
from proxy.net.metrics import CommandStats
from proxy.net.pubsub import Subscriptions
from proxy.net.replies import ReplyQueue
from proxy.net.route import RouteRef
from proxy.net.slicer import SlicedRequest, SliceRequest, send_sliced
from proxy.net.slot import ReplyOwner, Slot
from proxy.net.stream import BulkStream, stream_target, streamable
from proxy.net.transaction import Transaction

_YIELD_BYTES: Final = 256 * 1024  # a request under way this big yields the loop between its reads
RESERVED: Final = RESERVED_PREFIX  # keys refused by dispatch (commands/checks.py)
_clock: Final = perf_counter  # a static in the compiled build, not a lookup in the globals
# Requests parsed but not yet dispatched: (requests, their raw bytes, where to resume, error).
Backlog = tuple[list[list[bytes]], list[bytes], int, ProtocolError | None]


class ClientHost(DispatchHost, Protocol):
    """What a client connection needs from the server that accepted it."""

    client_config: ClientConfig
    users: Users  # client.password's default user and client.users, compiled
    max_clients: int  # client_config.max_connections, lowered to fit the open files limit
    slowlog_ms: float
    clients: set[ClientConnection]

    def next_client_id(self) -> int: ...

    @property
    def route_ref(self) -> RouteRef: ...  # `routes`, as one shared object (net/route.py)


class ClientConnection(ReplyQueue, asyncio.Protocol):
    def __init__(self, host: ClientHost) -> None:
        cfg = host.client_config
        self.host = host
        self._routes = host.route_ref
        self.client_id = host.next_client_id()
        session = Session(self.client_id, "", host.users)
        super().__init__(
            host, session, cfg.max_output_buffer_bytes, cfg.max_pending_requests, host.slowlog_ms
        )
        self.reader = RequestReader()
        self.reader.stream_gate = self._streamable
        self._pending_paused = False
        self._throttled = False  # the proxy-wide memory guard stopped reading from this client
        # A big value streamed through (proxy.stream): later requests wait for its reply.
        self._stream: BulkStream | None = None
        self._stream_paused = False  # the stream's backend connection is full, or it waits
        self._hold = False  # dispatch nothing now: writes paused, or a stream's reply awaited
        self._yielding = False  # reading paused until the next loop iteration (_yield_reading)
        self._sliced: SlicedRequest | None = None  # a huge request still being sent
        self._blocking: HeldCall | None = None  # BLPOP ...: later requests wait for it
        # Cache of host.metrics.command_stats by command name (CommandSpec's own hash is slow).
        self._stats: dict[str, CommandStats] = {}
        # The fast path's view of each command name this client sent (see _learn).
        self._known: dict[bytes, Known] = {}
        session.on_user_change = self._known.clear  # learnt under one user's rules (_learn)
        # Requests parsed but not yet dispatched (over the limit in flight): resumed by flush.
        self._backlog: Backlog | None = None
        self.last_active = perf_counter()  # the clock of _process's `now`
        self.tx: Transaction | None = None  # MULTI / WATCH state (net/transaction.py)
        self.pubsub: Subscriptions | None = None  # subscriptions (net/pubsub.py), from the first
        # Hot-key sampling: requests until the next one sampled (net/hotkeys.py); slots carry
        # their key only while big keys are watched (their replies are checked in flush).
        self._tick = 1
        self.keyed = False
        self.on_defences()

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.session.peer = f"{peer[0]}:{peer[1]}"
        if not peer_allowed(peer, self.host.client_config.allow_cidrs):
            self._refuse(transport, "address", errors.client_address_refused(self.session.peer))
            return
        if len(self.host.clients) >= self.host.max_clients:
            self._refuse(transport, "limit", errors.max_clients())
            return
        high = self._budget >> 2  # reading pauses here; the client is closed at the budget
        transport.set_write_buffer_limits(high=high, low=high // 2)
        self.host.clients.add(self)

    def _refuse(self, transport: asyncio.Transport, kind: str, reply: bytes) -> None:
        """Closed at accept (not allowed from its address, or too many clients), counted."""
        self.host.metrics.client_errors_total.labels(kind).inc()
        transport.write(reply)
        transport.close()
        self.closed = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stream is not None:
            self._stream.cancel()
        if self._blocking is not None:
            self._blocking.cancel()  # the backend is no longer blocked on its behalf
        if self.pubsub is not None:
            self.pubsub.close()  # its subscriber connections close with it
        self.host.migration.drop_waiting(self.client_id)  # deferred behind the fence: dropped
        if self.tx is not None:
            self.tx.close()  # a WATCH's dedicated connection closes with its client
        self.closed = True
        self.drop_owed()  # replies still owed by backends are dropped when they arrive
        self.host.clients.discard(self)

    def eof_received(self) -> bool:
        """Half-close: answer what was asked, then close (as Redis does); a client blocked
        in BLPOP ... is gone at once (its call ends with the transport: connection_lost)."""
        if self._blocking is not None:
            return False
        self.close()
        return True

    def pause_writing(self) -> None:
        self.write_paused = self._hold = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_hold()
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
        # A big request, maybe (only while big keys are watched: `keyed`).
        big = self.keyed and len(data) + reader.buffered_bytes() >= self._big_bytes
        try:
            requests = reader.feed(data)
        except ProtocolError as exc:
            failure = exc
            requests = exc.requests
        else:
            if big:
                self._note_big_requests(requests)
            tick = self._tick - 1
            if len(requests) == 1 and tick:  # unpipelined: _process's loop unrolled
                args = requests[0]
                known = self._known.get(args[0])
                if known is None:
                    known = self._learn(args[0])
                key = known.key
                router = self._routes.table
                pending = self.pending
                if (
                    router.fast
                    and known.lowest <= len(args) <= known.highest
                    and self.session.direct
                    and len(pending) < self._limit
                    and not self._hold
                    and not args[key].startswith(RESERVED)
                ):
                    self.last_active = now = _clock()
                    self._tick = tick
                    if known.defend is not None:
                        self._send_defended(known, args, now, self.reader.raws[0])
                        if pending[0].reply is not None:
                            self.flush()
                        return
                    slot = Slot(self, known.stats, now)
                    if self.keyed:
                        slot.key = args[key]
                    pending.append(slot)
                    backend = router.route_backends[router.node_for(args[key])]
                    raw = self.reader.raws[0] or encode_request(args)  # b"": not kept (see feed)
                    backend.send(self.session.lane, self.client_id, raw, slot)
                    if pending[0].reply is not None:  # a backend down answers at once
                        self.flush()
                    return
        self._process(requests, reader.raws, 0, failure)
        # A streamed value's request takes its place in the queue only after every request
        # before it: while some wait as the backlog, it starts when they are dispatched.
        if (
            reader.stream_args is not None
            and self._stream is None
            and self._backlog is None
            and not self.closed
        ):
            self._start_stream()
        if reader.has_buffered():
            self._drain_buffered()
        if reader.buffered_bytes() > _YIELD_BYTES:
            self._yield_reading()

    def _yield_reading(self) -> None:
        """A huge request is under way: read its next chunk in the next loop iteration, not
        in this one: libuv reads a ready socket up to 32 times per iteration, and parsing that
        much of a huge request at once would hold every other client (benchmarks/README.md)."""
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
        """Dispatch requests[start:]; past the limit in flight, keep the rest as a backlog and
        stop reading until the client has taken half of its replies."""
        routes = self._routes.table
        session = self.session
        pending = self.pending
        lane = session.lane
        cid = self.client_id
        known = self._known
        fast = routes.fast and session.direct
        limited = routes.fast and session.keyed  # an ACL user with key patterns: see Session
        key_ok = session.user.key_ok
        route_backends = routes.route_backends
        node_for = routes.node_for
        limit = self._limit
        tick = self._tick
        keyed = self.keyed
        self.last_active = now = _clock()  # the requests of one read arrived together
        for i in range(start, len(requests)):
            if len(pending) >= limit or self._hold:
                self._tick = tick
                self._keep_backlog((requests, raws, i, failure))
                return
            args = requests[i]
            tick -= 1
            if not tick:
                tick = self._sample(args)
            entry = known.get(args[0])
            if entry is None:
                entry = self._learn(args[0])
            key = entry.key
            if (
                entry.lowest <= len(args) <= entry.highest
                and (fast or (limited and key_ok(args[key])))
                and not args[key].startswith(RESERVED)
            ):
                if entry.defend is not None:
                    self._send_defended(entry, args, now, raws[i])
                    continue
                slot = Slot(self, entry.stats, now)  # the fast path, as in data_received
                if keyed:
                    slot.key = args[key]
                pending.append(slot)
                raw = raws[i] or encode_request(args)  # b"": not kept (see RequestReader.feed)
                route_backends[node_for(args[key])].send(lane, cid, raw, slot)
                continue
            dispatch(self, args)
            if session.closing:
                break
            if self._sliced is not None:  # sent slice by slice: the rest waits for it
                self._tick = tick
                self._wait_for_slices(requests, raws, i + 1, failure)
                return
            lane = session.lane
            fast = routes.fast and session.direct
            limited = routes.fast and session.keyed
            key_ok = session.user.key_ok
        self._tick = tick
        self._backlog = None
        if failure is not None and not session.closing:
            self._fail_protocol(str(failure))
        elif pending and pending[0].reply is not None:  # answered by the proxy itself
            self.flush()

    def _keep_backlog(self, backlog: Backlog) -> None:
        self._backlog = backlog
        self._pending_paused = True
        self._update_reading()
        self.flush()

    # -- what dispatch needs (net/dispatch.DispatchClient) ---------------------------------
    @property
    def owner(self) -> ReplyOwner:
        return self

    def append(self, slot: Slot) -> None:
        self.pending.append(slot)

    def stats_for(self, spec: CommandSpec) -> CommandStats:
        stats = self._stats.get(spec.name)
        if stats is None:
            stats = self._stats[spec.name] = self.host.metrics.command_stats(spec.label)
        return stats

    def begin_slices(self, request: SliceRequest, slot: Slot) -> None:
        self._sliced = send_sliced(request, slot, self, self.host)

    def _learn(self, name: bytes) -> Known:
        """What the fast path needs of a command name; a command the client's ACL user may
        not run never takes it (dispatch answers NOPERM). Forgotten when the user changes."""
        entry = fast_entry(name, self.stats_for, self.host.defences.defended)
        fast = entry is not NOT_FAST
        if fast and not self.session.user.allows(PLAIN[name].name):
            entry = NOT_FAST
        if fast or name in PLAIN:
            self._known[name] = entry  # unknown or mixed case: not remembered (client input)
        return entry

    # -- the cache defences (net/defence.py) ---------------------------------------------
    def on_defences(self) -> None:
        """The defences' config is new (or this client is): learn command names again."""
        self._known.clear()
        watch = self.host.defences.watch
        self._tick = watch.sample_every
        self._big_bytes = watch.big_bytes
        self.keyed = watch.big_bytes < NEVER

    def _send_defended(self, known: Known, args: list[bytes], now: float, raw: bytes) -> None:
        """The fast path of a command the defences must see (net/defence.py)."""
        spec, stats = known.defend, known.stats
        assert spec is not None
        slot = self.host.defences.new_slot(self, stats, spec, args, now)
        if self.keyed:
            slot.key = args[spec.first_key]
        self.pending.append(slot)
        session = self.session
        problem = send_defended(self.host, spec, args, slot, session.lane, self.client_id, raw)
        if problem is not None:
            slot.reply = problem
            slot.stats = None
            if stats is not None:
                stats.rejected += 1

    def _sample(self, args: list[bytes]) -> int:
        """A sampled request: count its keys; the countdown to the next sample."""
        watch = self.host.defences.watch
        if self.session.authed:
            watch.sample(args, self.host.routes)
        return watch.sample_every

    def _note_big_requests(self, requests: list[list[bytes]]) -> None:
        self.host.defences.watch.note_requests(requests)

    def on_big_reply(self, slot: Slot, size: int) -> None:
        self.host.defences.watch.note_reply(slot, size)

    # -- big values streamed through (proxy.stream) ---------------------------------------
    def _streamable(self, head: list[bytes]) -> bool:
        """RequestReader.stream_gate: only on the fast path (no migration, no MULTI or WATCH,
        no blocking call under way)."""
        session = self.session
        direct = session.direct and session.user.all_commands and self._blocking is None
        plain = not self.host.defences.active  # the cache and jitter see every write
        return direct and plain and self.host.routes.fast and streamable(head)

    def _start_stream(self) -> None:
        """The reader stopped at a streamed value: its request takes its place in the queue;
        its head goes out once the requests before it are answered (BulkStream.at_head)."""
        reader = self.reader
        spec, backend, head = stream_target(reader, self.host.routes)
        slot = Slot(self, self.stats_for(spec), perf_counter())
        self.pending.append(slot)
        self._stream = stream = BulkStream(self, backend, self.session.lane, head, slot)
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
        self._waited()

    def _update_hold(self) -> None:
        """Dispatch nothing while writes are paused, or a streamed value or a blocking call
        holds the requests after it (their order of execution is the client's)."""
        self._hold = self.write_paused or self._stream is not None or self._blocking is not None

    def _waited(self) -> None:
        """A request that held the later ones (a streamed value, a blocking call) is done."""
        self._update_hold()
        if self._backlog is not None or self.reader.stream_args is not None:
            self._pending_paused = True
            asyncio.get_running_loop().call_soon(self._resume_waiting)
        else:
            self._update_reading()

    def _resume_waiting(self) -> None:
        if self._backlog is not None:
            self._resume_backlog()
        elif not self.closed and self._stream is None and self.reader.stream_args is not None:
            self._pending_paused = False
            self._start_stream()
            self._update_reading()

    # -- blocking commands (net/blocking.py) ----------------------------------------------
    def begin_blocking(self, call: HeldCall) -> None:
        """Dispatch made `call`: later requests wait for its reply (held, as for a stream)."""
        self._blocking = call
        self._hold = True
        call.on_done = self._on_blocking_done
        if self.pending and self.pending[0] is call.slot:
            call.at_head()

    def _on_blocking_done(self) -> None:
        self._blocking = None
        self._waited()

    # -- the proxy-wide memory guard (proxy.memory.Holder) ----------------------------------
    def held_bytes(self) -> int:
        """Unread and owed replies (ReplyQueue), and requests not yet complete."""
        return super().held_bytes() + self.reader.buffered_bytes()

    @property
    def blocked(self) -> bool:
        """Waiting in BLPOP ... (INFO's blocked_clients)."""
        return isinstance(self._blocking, BlockingCall)

    def unblock(self, error: bool) -> bool:
        """CLIENT UNBLOCK of this client (net/blocking.py)."""
        return self._blocking is not None and self._blocking.unblock(error)

    def throttle(self, on: bool) -> None:
        self._throttled = on
        self._update_reading()

    def abort(self) -> None:
        self._backlog = None
        super().abort()

    # -- after replies went out: resume what waited for them -------------------------------
    def after_flush(self, transport: asyncio.Transport) -> None:
        pending = self.pending
        if self._sliced is not None:
            self._limit = 0  # see _wait_for_slices
        if self._stream is not None and pending and pending[0] is self._stream.slot:
            self._stream.at_head()
        if self._blocking is not None and pending and pending[0] is self._blocking.slot:
            self._blocking.at_head()
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
            self._keep_backlog((requests, raws, start, failure))
        else:
            self._backlog = None
            self.flush()

    def on_slices_sent(self) -> None:
        """The last slice of a huge request is sent: the requests after it may go."""
        self._sliced = None
        self._set_limit()  # restores the limit
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

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if (
            self.write_paused
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
        self.metrics.client_errors_total.labels("protocol").inc()
        self.reject(errors.protocol_error(detail), "unknown")
        self.session.closing = True
        self.flush()

    def close(self) -> None:
        """Close after writing the replies already owed (graceful drain)."""
        self.session.closing = True
        if not self.pending and self._backlog is None and self.transport is not None:
            self.transport.close()
            self.closed = True
