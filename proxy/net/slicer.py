"""A huge multi-key request sent slice by slice, one slice per event-loop iteration.

MGET/MSET/DEL/UNLINK/EXISTS/TOUCH of more than SLICE_KEYS keys is cut into requests of
SLICE_KEYS keys, each routed as any multi-key request is (split per backend, or through the
double-write path during a migration) with the router in use when it is sent. Replies are
folded in slice order as they arrive (slicing.SliceMerge) into the client's one reply slot.
The client's later requests wait until every slice is sent (ClientConnection._sliced), so none
overtakes a key of this one; a client that is gone gets no more slices sent for it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from proxy import errors
from proxy.commands.spec import CommandSpec, Kind
from proxy.net.dualwrite import send_planned
from proxy.net.fence import MigrationState
from proxy.net.route import RouteTable
from proxy.net.slot import ReplyOwner, Slot
from proxy.routing.slicing import SliceMerge, names_reserved, slice_args, slice_count

# Keys per slice, and the size over which a request is sliced: planning or merging a slice of
# this many keys keeps one loop iteration short (figures: benchmarks/README.md, "Huge multi-key
# requests").
SLICE_KEYS = 2000


def wants_slices(spec: CommandSpec, args: list[bytes]) -> bool:
    return spec.kind is Kind.MULTI and len(args) - 1 > SLICE_KEYS * spec.key_step


class SliceClient(Protocol):
    """The client a sliced request is for."""

    closed: bool

    def on_slices_sent(self) -> None: ...


class RouterHolder(Protocol):
    routes: RouteTable  # the route table in use now (a reload swaps it)
    migration: MigrationState


@dataclass(frozen=True, slots=True)
class SliceRequest:
    spec: CommandSpec
    args: list[bytes]
    lane: int  # the client's RESP version and database (commands/local.lane_for)
    client_id: int


class SlicedRequest(ReplyOwner):
    """Owner of the slices' reply slots; fills `parent` once every slice is answered."""

    __slots__ = (
        "checked", "client", "count", "host", "keys", "loop", "merge", "parent", "request",
        "sent", "waiting",
    )  # fmt: skip

    def __init__(
        self, request: SliceRequest, parent: Slot, client: SliceClient, host: RouterHolder
    ) -> None:
        super().__init__()
        self.request = request
        self.parent = parent
        self.client = client
        self.host = host
        self.keys = SLICE_KEYS  # read once: a test may change SLICE_KEYS meanwhile
        self.count = slice_count(request.spec, request.args, self.keys)
        self.checked = 0  # slices checked for reserved keys
        self.sent = 0
        self.waiting: deque[Slot] = deque()  # slices sent, not yet folded, in slice order
        self.merge = SliceMerge(request.spec.merge)
        self.loop = asyncio.get_running_loop()

    def check_next(self) -> None:
        """Look for a reserved key in one slice (the whole request is refused before any
        slice is sent, as routing.refusal_before_routing refuses smaller ones); then send."""
        if self.client.closed:
            return
        request = self.request
        args = slice_args(request.spec, request.args, self.checked, self.keys)
        if names_reserved(request.spec, args):
            self.sent = self.count  # nothing is sent
            self.client.on_slices_sent()
            self.parent.stats = None  # refused by the proxy, not a command that ran
            self.merge.add(errors.reserved_key(request.spec.name))
            self.flush()
            return
        self.checked += 1
        self.loop.call_soon(self.check_next if self.checked < self.count else self.send_next)

    def send_next(self) -> None:
        """Send one slice; schedule the next, or tell the client every slice is sent."""
        if self.client.closed:
            return  # the client is gone: nothing more is sent for it
        request = self.request
        args = slice_args(request.spec, request.args, self.sent, self.keys)
        self.sent += 1
        slot = Slot(self, None, self.parent.start)
        self.waiting.append(slot)
        host = self.host
        refusal = send_planned(
            request.spec, args, slot, host.routes, host.migration, request.lane, request.client_id
        )
        if refusal is not None:
            slot.reply = refusal
        if self.sent < self.count:
            self.loop.call_soon(self.send_next)
        else:
            self.client.on_slices_sent()
        if slot.reply is not None:  # answered at once (a backend down)
            self.flush()

    def flush(self) -> None:
        """Fold the answered slices at the head, in order; the last one fills the parent."""
        self.dirty = False
        if self.client.closed:
            self.waiting.clear()
            return
        waiting = self.waiting
        while waiting and waiting[0].reply is not None:
            self.merge.add(waiting.popleft().reply)  # type: ignore[arg-type]
        if waiting or self.sent < self.count or self.parent.reply is not None:
            return
        self.parent.answer(self.merge.reply())


def send_sliced(
    request: SliceRequest, parent: Slot, client: SliceClient, host: RouterHolder
) -> SlicedRequest:
    """Check `request`'s keys slice by slice (the first slice now), then send it slice by
    slice; its reply lands in `parent`."""
    sliced = SlicedRequest(request, parent, client, host)
    sliced.check_next()
    return sliced
