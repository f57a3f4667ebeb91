"""Huge multi-key requests are sent slice by slice (proxy/net/slicer.py), with the same replies.

SLICE_KEYS is lowered so that 50,000-key requests are cut into many slices; the replies are
compared byte for byte with one plain redis-server's, pipelined with other requests before and
after (whose order must be kept), in RESP2 and RESP3. The bystander test shows the event loop
answering another client between slices; the last test, a client gone mid-way getting no more.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator, Sequence

import pytest

from proxy.net import slicer
from proxy.net.slicer import SlicedRequest
from tests.support.processes import RedisServer, wait_until
from tests.support.runner import ProxyThread, proxy_for
from tests.support.wire import RespConn, encode

N = 50_000
Command = Sequence[bytes | str | int]


@pytest.fixture
def proxy(backends3: list[RedisServer]) -> Iterator[ProxyThread]:
    for server in backends3:
        server.client().flushall()
    with proxy_for([s.addr for s in backends3]) as running:
        yield running


def script() -> list[Command]:
    keys = [b"k:%d" % i for i in range(N)]
    mset: list[bytes] = [b"MSET"]
    for i, key in enumerate(keys[: N // 2]):
        mset += [key, b"v:%d" % i, *((key, b"again") if i % 9999 == 0 else ())]
    missing_and_dups = [*keys, b"nope", keys[3], keys[N - 1]]
    return [
        ("SET", "k:7", "before"),
        ("GET", "k:7"),
        mset,
        ["MGET", *missing_and_dups],
        ("SET", "k:7", "after"),  # must not overtake the MGET's read of k:7
        ["EXISTS", *missing_and_dups],
        ["TOUCH", *keys],
        ("GET", "k:7"),
        ["DEL", *missing_and_dups],
        ["UNLINK", *keys],
        ["MGET", *keys[:5000]],
        ("PING",),
    ]


@pytest.mark.pure_only  # patches a compiled module's internals
@pytest.mark.parametrize("proto", [2, 3])
def test_sliced_replies_match_redis(
    proxy: ProxyThread, redis1: RedisServer, monkeypatch: pytest.MonkeyPatch, proto: int
) -> None:
    monkeypatch.setattr(slicer, "SLICE_KEYS", 1000)
    sent: list[int] = []
    original = SlicedRequest.send_next

    def counting(self: SlicedRequest) -> None:
        sent.append(self.sent)
        original(self)

    monkeypatch.setattr(SlicedRequest, "send_next", counting)
    commands = script()
    replies = []
    for port in (proxy.port, redis1.port):
        with RespConn(port, timeout_s=30) as conn:
            conn.call("HELLO", proto)
            replies.append(conn.pipeline(commands))
    got, want = replies
    assert len(got) == len(want) == len(commands)
    for command, g, w in zip(commands, got, want, strict=True):
        assert g == w, command[0]
    assert len(sent) > 250  # 7 huge requests were sliced, 5 to 51 slices each


@pytest.mark.pure_only  # patches a compiled module's internals
def test_bystander_answered_between_slices(
    proxy: ProxyThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    pongs = [0]
    stop = threading.Event()
    seen_by_slice: list[int] = []  # the bystander's replies so far, as each slice is sent
    original = SlicedRequest.send_next

    def recording(self: SlicedRequest) -> None:
        seen_by_slice.append(pongs[0])
        original(self)

    monkeypatch.setattr(SlicedRequest, "send_next", recording)

    def bystander() -> None:
        with RespConn(proxy.port) as conn:
            while not stop.is_set():
                assert conn.call("PING")[0] == b"+PONG\r\n"
                pongs[0] += 1

    thread = threading.Thread(target=bystander, daemon=True)
    thread.start()
    try:
        wait_until(lambda: pongs[0] >= 3, what="bystander answered")
        keys = [b"b:%d" % i for i in range(300_000)]
        with RespConn(proxy.port, timeout_s=60) as conn:
            conn.call("SET", keys[-1], "last")
            _, value = conn.call("MGET", *keys)
    finally:
        stop.set()
        thread.join(10)
    assert isinstance(value, list) and len(value) == len(keys) and value[-1] == b"last"
    assert len(seen_by_slice) == -(-len(keys) // slicer.SLICE_KEYS)
    # The loop answered the bystander while the huge request was still being sent.
    assert seen_by_slice[-1] > seen_by_slice[0]


@pytest.mark.pure_only  # patches a compiled module's internals
def test_client_gone_mid_way_stops_the_slices(
    proxy: ProxyThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slicer, "SLICE_KEYS", 100)
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    # Close with a reset (not a half-close, which the proxy answers before it closes).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    calls: list[tuple[int, bool]] = []  # (slices sent before, client gone)
    original = SlicedRequest.send_next

    def closing(self: SlicedRequest) -> None:
        calls.append((self.sent, bool(self.client.closed)))
        if self.sent == 2:
            sock.close()  # from the proxy's loop: the client resets mid-way
        original(self)

    monkeypatch.setattr(SlicedRequest, "send_next", closing)
    keys = [b"g:%d" % i for i in range(100_000)]
    sock.sendall(encode(["MGET", *keys]))
    wait_until(lambda: any(gone for _, gone in calls), what="a slice step saw the client gone")
    with RespConn(proxy.port) as conn:  # the proxy still serves others
        assert conn.call("PING")[0] == b"+PONG\r\n"
    gone_at = next(sent for sent, gone in calls if gone)
    assert gone_at < len(keys) // 100  # slices left unsent
    assert calls[-1][1] and len(calls) == gone_at + 1  # nothing after that


def test_reserved_key_in_a_late_slice_refuses_the_whole_request(
    proxy: ProxyThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slicer, "SLICE_KEYS", 1000)
    mset: list[bytes] = [b"MSET"]
    for i in range(20_000):
        mset += [b"r:%d" % i, b"v"]
    mset[-2] = b"__shardproxy:gate"
    with RespConn(proxy.port) as conn:
        raw, _ = conn.call(*mset)
        assert raw.startswith(b"-ERR 'mset' refused: keys under '__shardproxy:'")
        assert conn.call("EXISTS", "r:0", "r:19998")[0] == b":0\r\n"  # no slice was sent
        assert conn.call("PING")[0] == b"+PONG\r\n"
