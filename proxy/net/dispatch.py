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
from proxy.commands.checks import (
    DB_ARGUMENT,
    db_argument_refusal,
    has_block_option,
    refusal_before_routing,
)
from proxy.commands.info import backend_sections
from proxy.commands.local import run_local
from proxy.commands.session import ServerView, Session
from proxy.commands.spec import (
    PLAIN,
    CommandSpec,
    Kind,
    Merge,
    arity_error,
    lookup,
    unknown_error,
)
from proxy.config.model import ClientConfig
from proxy.net.atomic import change_everywhere
from proxy.net.blocking import HeldCall, open_blocking
from proxy.net.defence import Defences, send_defended
from proxy.net.dualwrite import send_planned
from proxy.net.fence import MigrationState
from proxy.net.forwarder import send_info
from proxy.net.metrics import CommandStats, ProxyMetrics
from proxy.net.pubsub import SUBSCRIBED_OK, Subscriptions, handle_pubsub
from proxy.net.route import RouteTable
from proxy.net.slicer import SliceRequest, wants_slices
from proxy.net.slot import ReplyOwner, Slot
from proxy.net.transaction import Transaction, on_request, select_in_transaction, start

_PRE_AUTH: Final = frozenset({"auth", "hello", "quit", "reset"})


class Known:
    """The fast path's entry for a command name: key index, fewest and most arguments, stats,
    and the spec when the cache defences must see it (net/defence.py), else None. A class, not
    a tuple: compiled code reads its fields natively instead of checking and unboxing a tuple."""

    __slots__ = ("defend", "highest", "key", "lowest", "stats")

    def __init__(
        self,
        key: int,
        lowest: int,
        highest: int,
        stats: CommandStats | None,
        defend: CommandSpec | None,
    ) -> None:
        self.key = key
        self.lowest = lowest
        self.highest = highest
        self.stats = stats
        self.defend = defend


NOT_FAST: Final = Known(0, 1, 0, None, None)  # no argument count fits: always dispatched


class DispatchHost(ServerView, Protocol):
    routes: RouteTable  # the route table in use now (a reload swaps it)
    defences: Defences  # hot keys, big keys, the hot-key cache, coalescing, TTL jitter
    migration: MigrationState
    allow_flush: bool
    allow_config_set: tuple[str, ...]  # CONFIG SET: the parameters it may change (globs)
    metrics: ProxyMetrics
    client_config: ClientConfig


class DispatchClient(Protocol):
    """What dispatch needs of the client connection (net/client.py)."""

    session: Session
    client_id: int
    keyed: bool  # slots name their key (big keys are watched)
    pending: list[Slot]  # the reply slots in request order (net/replies.py)
    silent: set[Slot]  # slots whose replies are not written (CLIENT REPLY)
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

    def begin_blocking(self, call: HeldCall) -> None: ...


def fast_entry(
    name: bytes,
    stats_for: Callable[[CommandSpec], CommandStats],
    defended: Callable[[CommandSpec], bool],
) -> Known:
    """What the client's fast path (net/client.py) needs to know of a command name as typed
    (`GET` or `get`): for a single-key command, its key's index, the argument counts it takes,
    its stats and its spec if the cache defences must see it; anything else gets an entry no
    request fits, so it comes to dispatch."""
    spec = PLAIN.get(name)
    if spec is None or spec.kind is not Kind.SINGLE or spec.name in DB_ARGUMENT:
        return NOT_FAST
    arity = spec.arity
    highest = arity if arity > 0 else 1 << 30
    return Known(
        spec.first_key, abs(arity), highest, stats_for(spec), spec if defended(spec) else None
    )


def dispatch(client: DispatchClient, args: list[bytes]) -> None:
    """Check one request, then hand it to its kind's handler; its reply keeps its place.

    CLIENT REPLY OFF or SKIP (and the command after SKIP) get no reply: their slots are marked
    silent, dropped when they reach the head of the queue; pub/sub confirmations still go out."""
    session = client.session
    mode = session.reply_mode
    pending = client.pending
    tail = pending[-1] if pending else None
    _dispatch(client, args)
    if mode == b"on" and session.reply_mode == b"on":
        return
    spec = lookup(args)
    name = spec.name if spec is not None else ""
    if name == "client|reply" and session.reply_mode == b"on":
        return  # CLIENT REPLY ON is answered
    if spec is not None and spec.kind is Kind.PUBSUB:
        return  # confirmations are pushes: Redis sends them whatever the mode
    if mode == b"skip" and name != "client|reply":
        session.set_reply_mode(b"on")  # this was the command to skip
    for slot in reversed(pending):
        if slot is tail:
            break
        client.silent.add(slot)


def _dispatch(client: DispatchClient, args: list[bytes]) -> None:
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
    defences = client.host.defences
    if defences.cache is None:
        slot = Slot(client.owner, stats, perf_counter())
    else:  # a write's slot tracks its keys until its reply (net/hotcache.py)
        slot = defences.new_slot(client.owner, stats, spec, args)
    if client.keyed and spec.first_key and spec.first_key < len(args):
        slot.key = args[spec.first_key]  # names a big reply's key (net/hotkeys.py)
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
    if not session.user.everything:  # an ACL user (client.users): its commands and keys
        problem = session.user.refusal(spec, args)
        if problem is not None:
            client.host.metrics.client_errors_total.labels("noperm").inc()
            return problem
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
    if spec.name in DB_ARGUMENT:  # MOVE key db
        problem = db_argument_refusal(spec, args, host.databases)
        if problem is not None:
            return problem
    lane = client.session.lane
    if has_block_option(spec, args):  # XREAD(GROUP) ... BLOCK
        return send_blocking(client, spec, args, slot)
    if wants_slices(spec, args):
        client.begin_slices(SliceRequest(spec, args, lane, client.client_id), slot)
        return None
    if spec.merge is Merge.ATOMIC:  # FUNCTION LOAD DELETE RESTORE, CONFIG SET
        change = change_everywhere(spec, args, slot, host.routes, host.allow_config_set)
        if isinstance(change, bytes):
            return change
        client.begin_blocking(change)  # later requests wait for it, as for BLPOP
        return None
    if host.defences.active and not client.session.in_tx:  # never inside MULTI or WATCH
        return send_defended(host, spec, args, slot, lane, client.client_id)
    return send_planned(spec, args, slot, host.routes, host.migration, lane, client.client_id)


def answer_local(
    client: DispatchClient, spec: CommandSpec, args: list[bytes], slot: Slot
) -> bytes | None:
    """Answered by the proxy (commands/local.py); COMMAND by a backend, as Redis's own."""
    host = client.host
    proto = client.session.proto
    if spec.name == "command" or spec.name.startswith("command|"):
        host.routes.route_backends[0].send(proto, client.client_id, encode_request(args), slot)
    elif spec.name == "info" and (sections := backend_sections(args)):
        send_info(args, host.routes, slot, host, proto, sections)
    elif spec.name == "ping" and _subscribed_resp2(client):
        slot.reply = pong(args)
    else:
        if spec.name == "reset" and client.pubsub is not None:
            client.pubsub.close()  # RESET leaves subscribed mode
            client.pubsub = None
        if spec.name == "select" and client.tx is not None:
            slot.reply = select_in_transaction(client.tx, spec, args, host)
        else:
            slot.reply = run_local(spec, args, client.session, host)
        if slot.reply[:10] == b"-WRONGPASS":
            host.metrics.client_errors_total.labels("auth").inc()
    return None


def send_blocking(
    client: DispatchClient, spec: CommandSpec, args: list[bytes], slot: Slot
) -> bytes | None:
    """BLPOP ... XREAD BLOCK: on a backend connection of the client's own (net/blocking.py)."""
    host = client.host
    lane = client.session.lane
    call = open_blocking(spec, args, slot, host.routes, host.migration, lane)
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
    return errors.swapdb() if spec.name == "swapdb" else errors.denied(spec.name)


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
