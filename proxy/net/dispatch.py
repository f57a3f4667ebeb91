"""Dispatch: every request but the single-key fast path, by a table from command kind to handler.

As in Envoy's command splitter: SINGLE, MULTI, SAME_BACKEND and FANOUT all go to one handler that
sends what the one planner (routing.plan.plan) planned; LOCAL to the proxy's own answers;
BLOCKING to net/blocking.py; TRANSACTION to net/transaction.py (which also sees every request of
a client inside MULTI or WATCHing first); PUBSUB to net/pubsub.py; DENIED to a refusal. The
checks that come first (unknown command, arity, auth, RESP2 subscribed mode, reserved keys) are
answered in the request's place in the client's queue.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Final, Protocol

from proxy import errors
from proxy.codec.pubsub import pong
from proxy.codec.resp import encode_request
from proxy.commands.checks import has_block_option, refusal_before_routing
from proxy.commands.local import ServerView, Session, run_local, wants_keyspace
from proxy.commands.spec import PLAIN, CommandSpec, Kind, arity_error, lookup, unknown_error
from proxy.config.model import ClientConfig
from proxy.net.blocking import BlockingCall, open_blocking
from proxy.net.dualwrite import send_planned
from proxy.net.fence import MigrationState
from proxy.net.forwarder import send_info
from proxy.net.metrics import CommandStats, ProxyMetrics
from proxy.net.pubsub import SUBSCRIBED_OK, Subscriptions, handle_pubsub
from proxy.net.route import RouteTable
from proxy.net.slicer import SliceRequest, wants_slices
from proxy.net.slot import ReplyOwner, Slot
from proxy.net.transaction import Transaction, on_request, start

_PRE_AUTH: Final = frozenset({"auth", "hello", "quit", "reset"})
# The fast path's entry for a command name: key index, fewest and most arguments, stats.
Known = tuple[int, int, int, CommandStats | None]
NOT_FAST: Known = (0, 1, 0, None)  # no argument count fits: always dispatched


class DispatchHost(ServerView, Protocol):
    routes: RouteTable  # the route table in use now (a reload swaps it)
    migration: MigrationState
    allow_flush: bool
    metrics: ProxyMetrics
    client_config: ClientConfig


class DispatchClient(Protocol):
    """What dispatch needs of the client connection (net/client.py)."""

    session: Session
    client_id: int
    tx: Transaction | None  # MULTI / WATCH state (net/transaction.py), made on first use
    pubsub: Subscriptions | None  # net/pubsub.py: from the client's first (un)subscribe

    @property
    def host(self) -> DispatchHost: ...

    @property
    def owner(self) -> ReplyOwner: ...

    def stats_for(self, spec: CommandSpec) -> CommandStats: ...

    def append(self, slot: Slot) -> None: ...

    def reject(self, reply: bytes, label: str) -> None: ...

    def begin_slices(self, request: SliceRequest, slot: Slot) -> None: ...

    def begin_blocking(self, call: BlockingCall) -> None: ...


def fast_entry(name: bytes, stats_for: Callable[[CommandSpec], CommandStats]) -> Known:
    """What the client's fast path (net/client.py) needs to know of a command name as typed
    (`GET` or `get`): for a single-key command, its key's index, the argument counts it takes
    and its stats; anything else gets an entry no request fits, so it comes to dispatch."""
    spec = PLAIN.get(name)
    if spec is None or spec.kind is not Kind.SINGLE:
        return NOT_FAST
    arity = spec.arity
    highest = arity if arity > 0 else 1 << 30
    return (spec.first_key, abs(arity), highest, stats_for(spec))


def dispatch(client: DispatchClient, args: list[bytes]) -> None:
    """Check one request, then hand it to its kind's handler; its reply keeps its place."""
    spec = lookup(args)
    if client.session.in_tx and on_request(client, spec, args):
        return
    if spec is None:
        client.reject(unknown_error(args), "unknown")
        return
    refusal = _refusal(client, spec, args)
    if refusal is not None:
        client.reject(refusal, spec.label)
        return
    stats = client.stats_for(spec)
    slot = Slot(client.owner, stats, perf_counter())
    client.append(slot)
    problem = HANDLERS[spec.kind](client, spec, args, slot)
    if problem is not None:
        # Refused by the proxy: counted as rejected, not as a command that ran.
        slot.reply = problem
        slot.stats = None
        stats.rejected += 1


def _refusal(client: DispatchClient, spec: CommandSpec, args: list[bytes]) -> bytes | None:
    session = client.session
    if not spec.arity_ok(len(args)) or (  # before auth, as Redis checks it
        spec.kind is Kind.MULTI and (len(args) - 1) % spec.key_step
    ):
        return arity_error(spec)
    if not session.authed and spec.name not in _PRE_AUTH:
        client.host.metrics.client_errors_total.labels("auth").inc()
        return errors.noauth()
    if _subscribed_resp2(client) and spec.name not in SUBSCRIBED_OK:
        return errors.subscribed_mode(spec.name)
    # A huge request's keys are checked slice by slice (slicer.SlicedRequest.check_next).
    return None if wants_slices(spec, args) else refusal_before_routing(spec, args)


def _subscribed_resp2(client: DispatchClient) -> bool:
    """Redis's subscribed mode: a RESP2 client with subscriptions runs only (un)subscribes,
    PING, QUIT and RESET (RESP3 clients run anything)."""
    subs = client.pubsub
    return subs is not None and subs.active and client.session.proto == 2


# -- the handlers: send `args` on its way (the reply lands in `slot`), or return a refusal ----
Handler = Callable[[DispatchClient, CommandSpec, list[bytes], Slot], "bytes | None"]


def send_keyed(
    client: DispatchClient, spec: CommandSpec, args: list[bytes], slot: Slot
) -> bytes | None:
    """SINGLE MULTI SAME_BACKEND FANOUT: planned by the one planner and sent; a huge multi-key
    request is sent slice by slice (net/slicer.py)."""
    host = client.host
    if spec.needs_flush_permission and not host.allow_flush:
        return errors.flush_disabled(spec.name)
    proto = client.session.proto
    if has_block_option(spec, args):  # XREAD(GROUP) ... BLOCK
        return send_blocking(client, spec, args, slot)
    if wants_slices(spec, args):
        client.begin_slices(SliceRequest(spec, args, proto, client.client_id), slot)
        return None
    return send_planned(spec, args, slot, host.routes, host.migration, proto, client.client_id)


def answer_local(
    client: DispatchClient, spec: CommandSpec, args: list[bytes], slot: Slot
) -> bytes | None:
    """Answered by the proxy (commands/local.py); COMMAND by a backend, as Redis's own."""
    host = client.host
    proto = client.session.proto
    if spec.name == "command" or spec.name.startswith("command|"):
        host.routes.route_backends[0].send(proto, client.client_id, encode_request(args), slot)
    elif spec.name == "info" and wants_keyspace(args):
        send_info(args, host.routes, slot, host, proto)
    elif spec.name == "ping" and _subscribed_resp2(client):
        slot.reply = pong(args)
    else:
        if spec.name == "reset" and client.pubsub is not None:
            client.pubsub.close()  # RESET leaves subscribed mode
            client.pubsub = None
        slot.reply = run_local(spec, args, client.session, host)
        if slot.reply[:10] == b"-WRONGPASS":
            host.metrics.client_errors_total.labels("auth").inc()
    return None


def send_blocking(
    client: DispatchClient, spec: CommandSpec, args: list[bytes], slot: Slot
) -> bytes | None:
    """BLPOP ... XREAD BLOCK: on a backend connection of the client's own (net/blocking.py)."""
    host = client.host
    proto = client.session.proto
    call = open_blocking(spec, args, slot, host.routes, host.migration, proto)
    if isinstance(call, bytes):
        return call
    client.begin_blocking(call)
    return None


def refuse_unsupported(
    client: DispatchClient, spec: CommandSpec, args: list[bytes], slot: Slot
) -> bytes | None:
    return errors.not_supported_yet(spec.name)


def refuse_denied(
    client: DispatchClient, spec: CommandSpec, args: list[bytes], slot: Slot
) -> bytes | None:
    return errors.denied(spec.name)


HANDLERS: Final[dict[Kind, Handler]] = {
    Kind.SINGLE: send_keyed,
    Kind.MULTI: send_keyed,
    Kind.SAME_BACKEND: send_keyed,
    Kind.FANOUT: send_keyed,
    Kind.LOCAL: answer_local,
    Kind.TRANSACTION: start,
    Kind.BLOCKING: send_blocking,
    Kind.PUBSUB: handle_pubsub,
    Kind.DENIED: refuse_denied,
}
