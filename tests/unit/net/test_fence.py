"""net.fence.MigrationState: requests deferred behind the per-key fence, and a client that
closes while its requests wait there (they are dropped, never sent)."""

from __future__ import annotations

import pytest

from proxy.commands.spec import lookup
from proxy.net.dualwrite import _drainer
from proxy.net.fence import Deferred, MigrationState
from proxy.net.route import RouteTable
from proxy.net.slot import ReplyOwner, Slot

pytestmark = pytest.mark.pure_only  # Owner subclasses ReplyOwner, a compiled class there


class Owner(ReplyOwner):
    def flush(self) -> None:
        self.dirty = False


def no_routes() -> RouteTable:
    raise AssertionError("a dropped request must not be planned")


def deferred(key: bytes) -> Deferred:
    args = [b"SET", key, b"v"]
    spec = lookup(args)
    assert spec is not None
    return Deferred(spec, args, Slot(Owner(), None, 0.0), 2)


def test_deferred_requests_queue_behind_the_first_in_order() -> None:
    state = MigrationState(no_routes)
    state.held[b"k"] = []
    first, second = deferred(b"k"), deferred(b"other")
    state.defer(7, first, b"k", _drainer(state, 7))
    queue = state.waiting_for(7)
    assert queue is not None
    queue.append(second)  # a later request of the same client waits behind it, whatever its key
    assert list(state.waiting_for(7) or ()) == [first, second]
    assert state.waiting_for(8) is None
    assert len(state.held[b"k"]) == 1


def test_a_closed_clients_deferred_requests_are_dropped() -> None:
    state = MigrationState(no_routes)
    state.held[b"k"] = []
    item = deferred(b"k")
    state.defer(7, item, b"k", _drainer(state, 7))
    state.drop_waiting(7)  # the client closed (ClientConnection.connection_lost)
    state.release(b"k")  # the copy is done: nothing is planned or sent for the gone client
    assert state.waiting_for(7) is None
    assert item.slot.reply is None
