"""Pub/sub: a client's subscriptions over subscriber connections of its own; PUBLISH and PUBSUB.

A channel lives on the backend its name hashes to on the read pool's ring (hash tags and prefix
routes applied as to keys), so PUBLISH and SUBSCRIBE of one channel meet on one server; a pattern
listens on every backend of the read side (every routed pool's too). During a migration a message
is published on the read pool's owner only, and a subscription listens on its owner in both pools
(a pattern: on every backend of both), so the cut-read step (or a step back) moves no
subscription and each message arrives once. A reload re-homes every client's subscriptions
(`rehome`): added where the new table wants them (before the step that publishes there), left
where it no longer does (a server leaving the fleet).

The proxy counts a client's subscriptions itself (each backend knows only its own):
confirmations carry the client's totals and are answered in the request's place once every
backend involved confirmed. Messages join the client's reply queue as answered slots, so none is
written before its subscription's confirmation nor inside another reply; a message for a channel
the client has left (or holds on another backend) is dropped. README: Pub/sub.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from proxy import errors
from proxy.codec.pubsub import (
    CONFIRMATIONS,
    as_proto,
    confirmation,
    frame_head,
    merge_introspection,
)
from proxy.codec.resp import encode_request
from proxy.commands.session import Session
from proxy.commands.spec import CommandSpec
from proxy.config.model import ClientConfig
from proxy.net.backend import Backend
from proxy.net.dedicated import DedicatedConnection, Purpose, open_dedicated
from proxy.net.metrics import ProxyMetrics
from proxy.net.replies import ReplyQueue
from proxy.net.route import RouteTable
from proxy.net.slot import ReplyOwner, Slot

log = logging.getLogger("shardproxy.pubsub")

# Allowed in RESP2 subscribed mode, as in Redis 7.0 (processCommand).
SUBSCRIBED_OK: Final = frozenset(
    {"subscribe", "unsubscribe", "psubscribe", "punsubscribe", "ssubscribe", "sunsubscribe"}
    | {"ping", "quit", "reset"}
)


@dataclass(frozen=True, slots=True)
class Family:
    """Channels, patterns or shard channels: their commands, message kind and gauge label."""

    sub: bytes  # the subscribe command and confirmation kind
    unsub: bytes
    message: bytes  # the kind of the messages it receives
    label: str


CHANNEL = Family(b"subscribe", b"unsubscribe", b"message", "channel")
PATTERN = Family(b"psubscribe", b"punsubscribe", b"pmessage", "pattern")
SHARD = Family(b"ssubscribe", b"sunsubscribe", b"smessage", "shard_channel")
_BY_COMMAND = {f.sub.decode(): (f, True) for f in (CHANNEL, PATTERN, SHARD)} | {
    f.unsub.decode(): (f, False) for f in (CHANNEL, PATTERN, SHARD)
}
_BY_MESSAGE = {f.message: f for f in (CHANNEL, PATTERN, SHARD)}


class PubSubHost(Protocol):
    routes: RouteTable
    client_config: ClientConfig
    metrics: ProxyMetrics


class PubSubClient(Protocol):
    session: Session
    client_id: int
    pubsub: Subscriptions | None

    @property
    def host(self) -> PubSubHost: ...

    @property
    def owner(self) -> ReplyOwner: ...


class _Ack:
    """A (un)subscribe request's reply, given once every backend involved confirmed."""

    __slots__ = ("left", "reply", "slot")

    def __init__(self, slot: Slot | None, reply: bytes, backends: int) -> None:
        self.slot = slot
        self.reply = reply
        self.left = backends

    def backend_done(self) -> None:
        self.left -= 1
        if not self.left and self.slot is not None:  # None: a re-home, nobody asked
            self.slot.answer(self.reply)


def _ignore(conn: SubscriberConnection, raw: bytes) -> None:
    pass


class SubscriberConnection(DedicatedConnection):
    """A client's subscriber connection to one backend: after the handshake, every frame goes
    to `on_frame`; `acks` holds what each (un)subscribe sent still awaits: [ack, frames left]."""

    def __init__(
        self,
        backend: Backend,
        proto: int,
        purpose: Purpose,
        on_failed: Callable[[], None],
        watch_stalls: bool = True,
    ) -> None:
        super().__init__(backend, proto, purpose, on_failed, watch_stalls)
        self.on_frame: Callable[[SubscriberConnection, bytes], None] = _ignore
        self.acks: deque[list[_Ack | int]] = deque()

    def _deliver(self, replies: list[bytes], big: bytearray | None = None) -> None:
        if big is not None:  # a big message, read into a buffer of its own
            replies = [bytes(big)]
        handshake = self.owed()
        if handshake:
            super()._deliver(replies[:handshake])
            replies = replies[handshake:]
        for raw in replies:
            if self.closed:
                return
            self.on_frame(self, raw if type(raw) is bytes else bytes(raw))


class Subscriptions:
    """One client's channels, patterns and shard channels, each with the backend addresses it is
    subscribed on, and its subscriber connections by backend address."""

    def __init__(self, sink: ReplyQueue, session: Session, host: PubSubHost) -> None:
        self.sink = sink
        self.session = session
        self.limit = host.client_config.max_subscriptions
        self.gauge = host.metrics.pubsub_subscriptions
        self.tables: dict[Family, dict[bytes, tuple[str, ...]]] = {
            CHANNEL: {},
            PATTERN: {},
            SHARD: {},
        }
        self.conns: dict[str, SubscriberConnection] = {}
        self.active = False  # subscribed to anything: Redis's subscribed mode

    def count(self, family: Family) -> int:
        """What Redis's confirmations count: shard channels alone, or channels and patterns."""
        t = self.tables
        return len(t[SHARD]) if family is SHARD else len(t[CHANNEL]) + len(t[PATTERN])

    def subscribe(
        self, family: Family, names: list[bytes], slot: Slot, routes: RouteTable
    ) -> bytes | None:
        table = self.tables[family]
        new = [n for n in dict.fromkeys(names) if n not in table]
        if sum(len(t) for t in self.tables.values()) + len(new) > self.limit:
            return errors.too_many_subscriptions(self.limit)
        owners = {n: _owners(family, n, routes) for n in new}
        targets: dict[str, list[bytes]] = {}
        for name, addrs in owners.items():
            for addr in addrs:
                targets.setdefault(addr, []).append(name)
        problem = self._connect(targets, routes)
        if problem is not None:
            return problem
        replies = []
        proto = self.session.proto
        for name in names:
            if name not in table:
                table[name] = owners[name]
                self.gauge.labels(family.label).inc()
            replies.append(confirmation(family.sub, name, self.count(family), proto))
        self._send(family.sub, targets, slot, b"".join(replies))
        return None

    def unsubscribe(self, family: Family, names: list[bytes], slot: Slot) -> None:
        table = self.tables[family]
        proto = self.session.proto
        if not names:
            names = list(table)
            if not names:
                slot.reply = confirmation(family.unsub, None, self.count(family), proto)
                return
        targets: dict[str, list[bytes]] = {}
        replies = []
        for name in names:
            addrs = table.pop(name, None)
            if addrs is not None:
                self.gauge.labels(family.label).dec()
                for addr in addrs:
                    if addr in self.conns:
                        targets.setdefault(addr, []).append(name)
            replies.append(confirmation(family.unsub, name, self.count(family), proto))
        self._send(family.unsub, targets, slot, b"".join(replies))

    def _connect(self, targets: dict[str, list[bytes]], routes: RouteTable) -> bytes | None:
        """A subscriber connection to every backend in `targets`, or the error to answer."""
        for addr in targets:
            if addr in self.conns and not self.conns[addr].closed:
                continue
            conn = open_dedicated(
                routes.backends[addr],
                2,  # messages are re-marked for RESP3 clients (as_proto)
                Purpose.PUBSUB,
                self.on_backend_lost,
                watch_stalls=False,
                make=SubscriberConnection,
            )
            if isinstance(conn, bytes):
                return conn
            assert isinstance(conn, SubscriberConnection)
            conn.on_frame = self.on_frame
            self.conns[addr] = conn
        return None

    def rehome(self, routes: RouteTable) -> None:
        """A reload: subscribe each name where `routes` wants it and is not yet, unsubscribe
        it where it no longer is wanted, close the connections left with nothing. If a new
        owner cannot be reached, close the client (it sees the loss and re-subscribes)."""
        add: dict[Family, dict[str, list[bytes]]] = {}
        drop: dict[Family, dict[str, list[bytes]]] = {}
        for family, table in self.tables.items():
            for name, addrs in table.items():
                want = _owners(family, name, routes)
                if want != addrs:
                    table[name] = want
                    for addr in want:
                        if addr not in addrs:
                            add.setdefault(family, {}).setdefault(addr, []).append(name)
                    for addr in addrs:
                        if addr not in want:
                            drop.setdefault(family, {}).setdefault(addr, []).append(name)
        needed = {a for table in self.tables.values() for addrs in table.values() for a in addrs}
        for addr in [a for a in self.conns if a not in needed]:
            conn = self.conns.pop(addr)
            conn.release()
            for ack, _left in conn.acks:  # an UNSUBSCRIBE on its way there: done with it
                assert isinstance(ack, _Ack)
                ack.backend_done()
            conn.acks.clear()
        problem = self._connect({a: [] for targets in add.values() for a in targets}, routes)
        if problem is not None:
            self._close_client("a new owner", f"cannot re-subscribe after a reload: {problem!r}")
            return
        for family, targets in add.items():
            self._send(family.sub, targets, None, b"")
        for family, targets in drop.items():
            kept = {a: names for a, names in targets.items() if a in self.conns}
            self._send(family.unsub, kept, None, b"")

    def _send(
        self, command: bytes, targets: dict[str, list[bytes]], slot: Slot | None, reply: bytes
    ) -> None:
        self._update_mode()
        if not targets:
            if slot is not None:
                slot.reply = reply
            return
        ack = _Ack(slot, reply, len(targets))
        for addr, names in targets.items():
            conn = self.conns[addr]
            conn.acks.append([ack, len(names)])
            conn.write_raw(encode_request([command, *names]))

    def _update_mode(self) -> None:
        self.active = any(self.tables.values())
        # Subscribed clients leave the fast path: dispatch applies Redis's subscribed mode.
        self.session.set_subscribed(self.active)

    # -- frames from the subscriber connections --------------------------------------------
    def on_frame(self, conn: SubscriberConnection, raw: bytes) -> None:
        kind, name = frame_head(raw)
        family = _BY_MESSAGE.get(kind)
        if family is not None:
            addrs = self.tables[family].get(name)
            if addrs is not None and conn.backend.addr in addrs:
                self._push(as_proto(raw, self.session.proto))
            return
        if kind in CONFIRMATIONS and conn.acks:
            entry = conn.acks[0]
            left = entry[1]
            assert isinstance(left, int)
            entry[1] = left - 1
            if left == 1:
                conn.acks.popleft()
                ack = entry[0]
                assert isinstance(ack, _Ack)
                ack.backend_done()
            return
        self._close_client(conn.backend.name, f"unexpected reply {bytes(raw[:80])!r}")

    def _push(self, raw: bytes) -> None:
        sink = self.sink
        if sink.closed:
            return
        slot = Slot(sink, None, 0.0)
        slot.reply = raw
        pending = sink.pending
        pending.append(slot)
        if pending[0].reply is not None:
            sink.flush()

    def on_backend_lost(self) -> None:
        lost = [c.backend.name for c in self.conns.values() if c.closed]
        self._close_client(", ".join(lost) or "a backend", "subscriber connection lost")

    def _close_client(self, backend: str, reason: str) -> None:
        """Its subscriptions there are gone: close the client, as a restarting Redis would,
        so it sees the loss (and re-subscribes) instead of silence."""
        log.warning(errors.subscriber_lost(self.session.client_id, backend, reason))
        self.close()
        self.sink.abort()

    def close(self) -> None:
        """The client is gone or sent RESET: end every subscription and connection."""
        for family, table in self.tables.items():
            if table:
                self.gauge.labels(family.label).dec(len(table))
                table.clear()
        conns, self.conns = self.conns, {}
        for conn in conns.values():
            conn.release()
            # Requests before a RESET still get their replies, in their places.
            for ack, _left in conn.acks:
                assert isinstance(ack, _Ack)
                if ack.slot is not None and ack.slot.reply is None:
                    ack.slot.answer(ack.reply)
            conn.acks.clear()
        self._update_mode()


def _owners(family: Family, name: bytes, routes: RouteTable) -> tuple[str, ...]:
    """Where a subscription listens: its owner on the read pool and, during a migration, on the
    other pool (a pattern: every backend of both), where PUBLISH goes before or after cut-read."""
    read, other = routes.read, routes.other
    if family is PATTERN:
        return tuple(dict.fromkeys(read.addrs + other.addrs))
    return tuple(dict.fromkeys((read.addr_for(name), other.addr_for(name))))


class _Introspection(ReplyOwner):
    """PUBSUB CHANNELS / NUMSUB / NUMPAT / SHARD...: one reply per backend, merged."""

    def __init__(self, parent: Slot, sub: str, backends: int, resp3: bool) -> None:
        super().__init__()
        self.parent = parent
        self.sub = sub
        self.resp3 = resp3
        self.children = [Slot(self, None, parent.start) for _ in range(backends)]

    def flush(self) -> None:
        self.dirty = False
        replies = [c.reply for c in self.children if c.reply is not None]
        if self.parent.reply is None and len(replies) == len(self.children):
            self.parent.answer(merge_introspection(self.sub, replies, self.resp3))


def handle_pubsub(
    client: PubSubClient, spec: CommandSpec, args: list[bytes], slot: Slot
) -> bytes | None:
    """Kind.PUBSUB's handler (net/dispatch.py)."""
    name = spec.name
    routes = client.host.routes
    session = client.session
    if name in ("publish", "spublish"):
        send_publish(args, routes, slot, session.proto, client.client_id)
        return None
    if name.startswith("pubsub|"):
        gather = _send_introspection(name[7:], args, routes, slot, session.proto)
        gather.flush()
        return None
    found = _BY_COMMAND.get(name)
    if found is None:
        return errors.not_supported_yet(name)
    subs = client.pubsub
    if subs is None:
        sink = client.owner
        assert isinstance(sink, ReplyQueue)
        subs = client.pubsub = Subscriptions(sink, session, client.host)
    family, subscribing = found
    if subscribing:
        return subs.subscribe(family, args[1:], slot, routes)
    subs.unsubscribe(family, args[1:], slot)
    return None


def send_publish(args: list[bytes], routes: RouteTable, slot: Slot, proto: int, cid: int) -> None:
    """To the channel's owner on the read pool only (its subscribers listen there, in every
    phase): one copy of each message, so none is received twice."""
    addr = routes.read.addr_for(args[1])
    routes.backends[addr].send(proto, cid, encode_request(args), slot)


def rehome_all(clients: Iterable[PubSubClient], routes: RouteTable) -> None:
    """A reload swapped the route table: re-home every subscriber's subscriptions."""
    for client in clients:
        subs = client.pubsub
        if subs is not None and subs.active:
            subs.rehome(routes)


def _send_introspection(
    sub: str, args: list[bytes], routes: RouteTable, slot: Slot, proto: int
) -> _Introspection:
    addrs = list(dict.fromkeys(routes.read.addrs))  # every subscription listens there too
    gather = _Introspection(slot, sub, len(addrs), proto == 3)
    payload = encode_request(args)
    for addr, child in zip(addrs, gather.children, strict=True):
        routes.backends[addr].send(proto, 0, payload, child)
    return gather
