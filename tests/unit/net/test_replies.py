"""net/replies.ReplyQueue: big replies kept as read (keep_view) are written once and never
outlive the client."""

from __future__ import annotations

from typing import Any

from proxy.commands.session import Session
from proxy.commands.users import compile_users
from proxy.config.schema import ClientConfig
from proxy.net.metrics import ProxyMetrics
from proxy.net.replies import ReplyQueue
from proxy.net.slot import VIEW_MARK, Slot


class _Host:
    def __init__(self) -> None:
        self.metrics = ProxyMetrics()


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        pass


def _queue() -> tuple[ReplyQueue, _Transport]:
    session = Session(1, "", compile_users(ClientConfig()))
    queue = ReplyQueue(_Host(), session, 64 << 20, 1000, 0.0)
    transport = _Transport()
    queue.transport = transport  # type: ignore[assignment]
    return queue, transport


def test_a_kept_view_is_written_in_its_place() -> None:
    queue, transport = _queue()
    first, big, last = (Slot(queue, None, 0.0) for _ in range(3))
    queue.pending += [first, big, last]
    value = bytearray(b"$5\r\nhello\r\n")
    assert queue.keep_view(big, value)
    big.reply = VIEW_MARK
    last.reply = b"+OK\r\n"
    queue.flush()
    assert transport.written == []  # the head is not answered yet
    first.reply = b":1\r\n"
    queue.flush()
    assert transport.written == [b":1\r\n$5\r\nhello\r\n+OK\r\n"]
    assert not queue.pending and not queue._views


def test_views_owed_to_a_closed_client_are_dropped() -> None:
    queue, _ = _queue()
    slots = [Slot(queue, None, 0.0) for _ in range(3)]
    queue.pending += slots
    assert queue.keep_view(slots[0], bytearray(b"$1\r\nx\r\n"))
    queue.abort()  # the client goes away with replies in flight
    assert not queue._views
    for slot in slots[1:]:  # their replies arrive afterwards
        assert queue.keep_view(slot, bytearray(100_000))
        slot.reply = VIEW_MARK
        queue.touch()
    assert not queue._views and not queue.pending
