"""A tiny, independent RESP2/RESP3 client for tests that compare replies byte for byte.

It deliberately shares no code with `proxy.codec.resp`: the proxy is checked against real Redis
through a parser of its own. `read_reply` returns the raw bytes of one reply and its decoded value.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Err:
    """An error reply (`-` or `!`), kept apart from strings so comparisons see the difference."""

    text: str


@dataclass(frozen=True)
class Agg:
    """A RESP3 aggregate that is not a plain array: map `%`, set `~`, push `>`, attribute `|`."""

    kind: str
    items: tuple[object, ...]


class Incomplete(Exception):
    pass


def encode(args: Sequence[bytes | str | int]) -> bytes:
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def parse(buf: bytes | bytearray, pos: int = 0) -> tuple[object, int]:
    """Decode one reply starting at `pos`; return (value, end). Raises Incomplete."""
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        raise Incomplete
    kind = chr(buf[pos])
    line = bytes(buf[pos + 1 : eol])
    nxt = eol + 2
    if kind in "$=!":
        size = int(line)
        if size < 0:
            return None, nxt
        if len(buf) < nxt + size + 2:
            raise Incomplete
        body = bytes(buf[nxt : nxt + size])
        if kind == "!":
            return Err(body.decode(errors="replace")), nxt + size + 2
        return (("=", body) if kind == "=" else body), nxt + size + 2
    if kind in "*~>%|":
        count = int(line)
        if count < 0:
            return None, nxt
        items: list[object] = []
        for _ in range(count * 2 if kind in "%|" else count):
            value, nxt = parse(buf, nxt)
            items.append(value)
        if kind == "*":
            return items, nxt
        if kind == "|":  # an attribute precedes the real reply: keep both
            value, nxt = parse(buf, nxt)
            return (Agg("|", tuple(items)), value), nxt
        return Agg(kind, tuple(items)), nxt
    if kind == "+":
        return ("+", line), nxt
    if kind == "-":
        return Err(line.decode(errors="replace")), nxt
    if kind == ":":
        return int(line), nxt
    if kind == "_":
        return None, nxt
    if kind == ",":
        return (",", line), nxt
    if kind == "#":
        return line == b"t", nxt
    if kind == "(":
        return ("(", int(line)), nxt
    raise ValueError(f"bad reply type byte {kind!r} in {bytes(buf[pos : pos + 40])!r}")


class RespConn:
    """One blocking socket; `call` sends a command and returns (raw, value)."""

    def __init__(self, port: int, timeout_s: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RespConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, payload: bytes) -> None:
        self.sock.sendall(payload)

    def read_reply(self) -> tuple[bytes, object]:
        while True:
            if self.buf:
                try:
                    value, end = parse(self.buf)
                except Incomplete:
                    pass
                else:
                    raw = bytes(self.buf[:end])
                    del self.buf[:end]
                    return raw, value
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("connection closed while a reply was owed")
            self.buf += data

    def call(self, *args: bytes | str | int) -> tuple[bytes, object]:
        self.send(encode(args))
        return self.read_reply()

    def pipeline(
        self,
        commands: Iterable[Sequence[bytes | str | int]],
        chunk_bytes: int = 8192,
        window: int = 3,
    ) -> list[bytes]:
        """Pipeline `commands`; return the raw replies in order.

        Commands go out in writes of about `chunk_bytes`, cut at command boundaries, with at most
        `window` writes whose replies are still unread: hundreds of requests are in flight, but
        socket buffers never fill, so each write reaches the peer in one piece (requests cut
        mid-way by TCP are tested on their own, in test_faults).
        """
        chunks: list[list[bytes]] = [[]]
        size = 0
        for command in commands:
            wire = encode(command)
            if size >= chunk_bytes:
                chunks.append([])
                size = 0
            chunks[-1].append(wire)
            size += len(wire)
        replies: list[bytes] = []
        for i, chunk in enumerate(chunks):
            self.sock.sendall(b"".join(chunk))
            if i >= window - 1:
                replies += [self.read_reply()[0] for _ in chunks[i - window + 1]]
        for chunk in chunks[max(0, len(chunks) - window + 1) :]:
            replies += [self.read_reply()[0] for _ in chunk]
        return replies


def stream(
    conn: RespConn, commands: Sequence[Sequence[bytes | str | int]], cuts: Iterable[int]
) -> list[bytes]:
    """Write every command as one byte stream cut into pieces of the sizes in `cuts` (from a
    thread, with TCP_NODELAY, so the peer reads at arbitrary boundaries) while reading replies."""
    payload = b"".join(encode(c) for c in commands)
    pieces: list[bytes] = []
    pos = 0
    for size in cuts:
        if pos >= len(payload):
            break
        pieces.append(payload[pos : pos + size])
        pos += size
    pieces.append(payload[pos:])
    failure: list[OSError] = []

    def write() -> None:
        try:
            for piece in pieces:
                conn.sock.sendall(piece)
        except OSError as exc:  # reported by the reader
            failure.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        return [conn.read_reply()[0] for _ in commands]
    finally:
        writer.join(10)
        assert not failure, failure


def read_until_closed(sock: socket.socket) -> tuple[bytes, bool]:
    """Everything the peer sends until it closes (True) or the socket times out (False)."""
    chunks: list[bytes] = []
    try:
        while True:
            data = sock.recv(1 << 16)
            if not data:
                return b"".join(chunks), True
            chunks.append(data)
    except TimeoutError:
        return b"".join(chunks), False
    except ConnectionResetError:
        return b"".join(chunks), True


def exchange(port: int, payload: bytes, timeout_s: float = 2.0) -> tuple[bytes, bool]:
    """Send raw bytes on a fresh connection; return (everything received, peer closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)
        return read_until_closed(sock)


def random_prefixes(rng: random.Random, data: bytes, count: int = 8) -> list[bytes]:
    """`data` cut at `count` random places, and whole: what a reader holds after a partial read."""
    return [data[:cut] for cut in [*sorted(rng.sample(range(len(data) + 1), count)), len(data)]]
