"""Client requests, pure: RESP multibulk and inline commands to lists of arguments.

A pure-Python parser (not hiredis) because the proxy must know exactly where each request ends:
to tell an inline command from the rest of a split request, to forward a request's bytes as
received, and to refuse a huge `*N` header before anything is allocated for it.

Invariants: it accepts exactly what Redis accepts (lengths by Redis's string2ll rules: plain
decimal, no sign but `-`, no leading zero, no space), and every byte it hands on for forwarding
(`raws`) is canonical RESP, so nothing a client sends can reach a shared backend connection in a
form that makes the backend close it. Parsing is linear in the bytes received: a request that
arrives over many reads is resumed where the last read stopped, never re-parsed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

from proxy.codec.inline import parse_inline
from proxy.codec.resp import ProtocolError, encode_request
from proxy.codec.scan import COMPILED, scan_requests

MAX_INLINE_BYTES: Final = 64 * 1024  # Redis's PROTO_INLINE_MAX_SIZE
MAX_MULTIBULK: Final = (
    1024 * 1024
)  # elements in one request (Redis: INT_MAX; hiredis would preallocate)
MAX_BULK_BYTES: Final = 512 * 1024 * 1024  # Redis's proto-max-bulk-len default
MAX_HEADER_BYTES: Final = 32  # a `*N` / `$N` line longer than this cannot hold a valid length
# Before AUTH, Redis refuses bigger requests at once (networking.c, authRequired).
UNAUTH_MAX_MULTIBULK: Final = 10
UNAUTH_MAX_BULK_BYTES: Final = 16 * 1024

# A last argument at least this big may be streamed through (see RequestReader.stream_gate).
STREAM_MIN_BYTES: Final = 1024 * 1024

_CR: Final = 13
_LF: Final = 10


class BodySink(Protocol):
    """Where a streamed value's bytes go, in order, as they arrive."""

    def on_body(self, chunk: bytes) -> None: ...

    def on_end(self) -> None: ...


def strict_int(text: bytes) -> int | None:
    """The value of `text` by Redis's string2ll rules, or None: ASCII digits with an optional
    `-`, no `+`, no leading zero (but `0`), no `-0`, no space, no `_`."""
    if text.isdigit():  # bytes.isdigit: ASCII digits only, False for b""
        return int(text) if text[0] != 48 or len(text) == 1 else None
    if text[:1] == b"-" and text[1:].isdigit() and text[1] != 48:
        return -int(text[1:])
    return None


class RequestReader:
    """Parses client requests, RESP multibulk and inline, as an explicit resumable state machine.

    `feed` returns the complete requests as lists of bytes arguments, and sets `raws` to their
    canonical RESP bytes: the bytes received, when they arrived in one read and were canonical;
    else b"", and whoever forwards the request as one piece encodes it (encode_request): a
    request split or merged anyway (a 1M-key MGET) is never encoded whole for nothing. It
    raises ProtocolError with Redis's wording on malformed input (the caller answers it and
    closes the connection), with the requests parsed before it in `ProtocolError.requests`.

    While `authed` is False, Redis's pre-AUTH limits apply and at most one request is returned
    per call (Redis runs each request before it parses the next, so an AUTH followed by a big
    request in one read is fine): call `feed(b"")` again while `has_buffered()` says so.
    """

    __slots__ = (
        "_args",
        "_args_bytes",
        "_canon",
        "_chunks",
        "_got",
        "_left",
        "_line",
        "_need",
        "_rest",
        "_sink",
        "_trail_left",
        "_value_left",
        "authed",
        "raws",
        "stream_args",
        "stream_gate",
        "stream_size",
    )

    def __init__(self) -> None:
        self.authed = True
        # The RESP bytes of each request the last feed() returned, in the same order, so a
        # request bound for one backend is forwarded as received, not re-encoded.
        self.raws: list[bytes] = []
        self._rest = b""  # unparsed bytes held back by the one-request-per-call rule
        self._line = bytearray()  # a partial header or inline line (no line end yet)
        self._args: list[bytes] = []  # arguments of the request under way
        self._args_bytes = 0  # their size
        self._left = 0  # arguments still to come in the request under way (0: between)
        self._canon = True  # the request under way arrived in canonical form
        self._chunks: list[bytes] | None = None  # a bulk string being collected over reads
        self._need = 0  # bytes still missing from that bulk, its CRLF included
        self._got = 0  # bytes of that bulk collected so far
        # Streaming: when a request's last argument is a bulk of STREAM_MIN_BYTES or more and
        # stream_gate(the arguments before it) says yes, feed stops there and sets stream_args
        # and stream_size; after begin_stream(sink), the value's bytes go to the sink as they
        # arrive (never assembled) and parsing goes on after it.
        self.stream_gate: Callable[[list[bytes]], bool] | None = None
        self.stream_args: list[bytes] | None = None
        self.stream_size = 0
        self._sink: BodySink | None = None
        self._value_left = 0  # value bytes still to pass to the sink
        self._trail_left = 0  # bytes of the CRLF after the value still to skip

    def has_buffered(self) -> bool:
        """True when bytes already received may hold another complete request."""
        return bool(self._rest) and self.stream_args is None

    def begin_stream(self, sink: BodySink) -> None:
        """Start passing the value announced by stream_args to `sink` (call feed next)."""
        self._sink = sink

    def buffered_bytes(self) -> int:
        """What the reader holds of requests not yet complete (for memory budgets)."""
        return len(self._rest) + len(self._line) + self._args_bytes + self._got

    def feed(self, data: bytes) -> list[list[bytes]]:
        out: list[list[bytes]] = []
        raws: list[bytes] = []
        self.raws = raws
        if self.stream_args is not None:
            if self._rest:
                data = self._rest + data
                self._rest = b""
            if self._sink is None:  # stopped at a streamed value: the client begins it
                self._rest = data
                return out
            data = self._pass_value(data)
            # Still streaming? (stream_args, narrowed above, is stale for compiled code.)
            if self._value_left or self._trail_left or not data:
                return out
        if self._chunks is not None:
            data = self._collect(data, out, raws)
            if self._need or not data:  # still collecting (_chunks, narrowed above, is stale)
                return out
        if self._rest:
            data = self._rest + data
            self._rest = b""
        elif self._line:
            if not self._line_ends(data):
                return out
            data = bytes(self._line) + data
            self._line.clear()
        pos = 0
        if self._left == 0 and self.authed:
            # The same requests either way (tests/unit/codec): splitting is fastest in Python,
            # a byte scan in C, where it makes no object but the arguments.
            pos = (
                scan_requests(data, out, raws, MAX_MULTIBULK, STREAM_MIN_BYTES)
                if COMPILED
                else _parse_simple(data, out, raws)
            )
            if pos == len(data):  # the common case: whole requests only
                return out
        try:
            self._parse(data, pos, out, raws)
        except ProtocolError as exc:
            exc.requests = out
            raise
        return out

    # -- the careful parser ----------------------------------------------------------------
    def _line_ends(self, data: bytes) -> bool:
        """Append `data` to the partial line unless it ends that line (then the caller parses
        the line and what follows it); the line's limits apply as it grows."""
        line = self._line
        inline = self._left == 0 and line[0] != 42  # not a `*N` or `$N` header line
        if inline:
            if data.find(b"\n") >= 0:
                return True
        elif data and (line[-1] == _CR or data.find(b"\r") >= 0):
            return True  # a header ends at its CR and the byte after it
        line += data
        if inline:
            if len(line) > MAX_INLINE_BYTES:
                raise ProtocolError("too big inline request")
        elif len(line) > MAX_HEADER_BYTES:
            raise ProtocolError(
                "too big mbulk count string" if self._left == 0 else "too big bulk count string"
            )
        return False

    def _parse(self, data: bytes, pos: int, out: list[list[bytes]], raws: list[bytes]) -> None:
        """Parse `data[pos:]` on from the state left by the last call; keep what is unfinished."""
        n = len(data)
        start = pos if self._left == 0 else -1  # where the request under way began in `data`
        while pos < n:
            if self._left == 0:
                if out and not self.authed:
                    self._rest = data[pos:]  # one request per call until AUTH
                    return
                start = pos
                if data[pos] != 42:  # not '*': an inline command line
                    pos = self._inline(data, pos, out, raws)
                    continue
                pos = self._multibulk_header(data, pos)
                continue
            if data[pos] != 36:  # '$'
                raise ProtocolError(f"expected '$', got '{chr(data[pos])}'")
            eol = data.find(b"\r", pos)
            if eol < 0 or eol + 1 >= n:
                self._keep_line(data, pos, "too big bulk count string")
                return
            size = strict_int(data[pos + 1 : eol])
            if size is None or size < 0 or size > MAX_BULK_BYTES:
                raise ProtocolError("invalid bulk length")
            if size > UNAUTH_MAX_BULK_BYTES and not self.authed:
                raise ProtocolError("unauthenticated bulk length")
            if data[eol + 1] != _LF:
                self._canon = False
            body = eol + 2
            if size >= STREAM_MIN_BYTES and self._left == 1 and self._streams(size):
                self._rest = data[body:]
                return
            end = body + size
            if end + 2 > n:  # the rest of the value comes in later reads
                self._chunks = [data[body:]]
                self._got = n - body
                self._need = end + 2 - n
                return
            self._args.append(data[body:end])
            self._args_bytes += size
            if data[end] != _CR or data[end + 1] != _LF:
                self._canon = False
            pos = end + 2
            self._left -= 1
            if self._left == 0:
                raws.append(data[start:pos] if start >= 0 and self._canon else b"")
                self._finish(out, raws)

    def _streams(self, size: int) -> bool:
        """Ask stream_gate whether the value announced now goes to a sink; if so, stop here."""
        gate = self.stream_gate
        if gate is None or not self.authed or not gate(self._args):
            return False
        self.stream_args = self._args
        self.stream_size = size
        self._value_left = size
        self._trail_left = 2
        self._args = []
        self._args_bytes = 0
        self._left = 0
        self._canon = True
        return True

    def _pass_value(self, data: bytes) -> bytes:
        """Pass the streamed value's bytes to the sink; return what follows its CRLF."""
        sink = self._sink
        assert sink is not None
        take = min(len(data), self._value_left)
        if take:
            sink.on_body(data if take == len(data) else data[:take])
            self._value_left -= take
            data = data[take:] if take < len(data) else b""
        if self._value_left == 0 and data:
            skip = min(len(data), self._trail_left)  # Redis skips these two bytes unread
            self._trail_left -= skip
            data = data[skip:]
        if self._value_left == 0 and self._trail_left == 0:
            self._sink = None
            self.stream_args = None
            sink.on_end()
        return data

    def _multibulk_header(self, data: bytes, pos: int) -> int:
        eol = data.find(b"\r", pos)
        if eol < 0 or eol + 1 >= len(data):
            self._keep_line(data, pos, "too big mbulk count string")
            return len(data)
        count = strict_int(data[pos + 1 : eol])
        if count is None or count > MAX_MULTIBULK:
            raise ProtocolError("invalid multibulk length")
        if count > UNAUTH_MAX_MULTIBULK and not self.authed:
            raise ProtocolError("unauthenticated multibulk length")
        self._canon = data[eol + 1] == _LF
        self._left = max(count, 0)  # Redis ignores *0 and *-1
        return eol + 2

    def _inline(self, data: bytes, pos: int, out: list[list[bytes]], raws: list[bytes]) -> int:
        nl = data.find(b"\n", pos)
        if nl < 0:
            if len(data) - pos > MAX_INLINE_BYTES:
                raise ProtocolError("too big inline request")
            self._line += data[pos:]
            return len(data)
        args = parse_inline(data[pos:nl])
        if args:
            out.append(args)
            raws.append(encode_request(args))
        return nl + 1

    def _keep_line(self, data: bytes, pos: int, too_big: str) -> None:
        if len(data) - pos > MAX_HEADER_BYTES:
            raise ProtocolError(too_big)
        self._line += data[pos:]

    def _collect(self, data: bytes, out: list[list[bytes]], raws: list[bytes]) -> bytes:
        """Add `data` to the bulk string being collected; return what follows it."""
        chunks = self._chunks
        assert chunks is not None
        take = min(len(data), self._need)
        chunks.append(data[:take] if take < len(data) else data)
        self._need -= take
        self._got += take
        if self._need:
            return b""
        value = b"".join(chunks)
        self._chunks = None
        self._got = 0
        if value[-2:] != b"\r\n":
            self._canon = False
        self._args.append(value[:-2])
        self._args_bytes += len(value) - 2
        self._left -= 1
        if self._left == 0:
            raws.append(b"")
            self._finish(out, raws)
        return data[take:]

    def _finish(self, out: list[list[bytes]], raws: list[bytes]) -> None:
        """The request under way is complete: hand it out."""
        out.append(self._args)
        self._args = []
        self._args_bytes = 0
        self._canon = True


_BULK_HEADS_N: Final = 4096
_BULK_HEADS: Final = tuple(b"$%d" % n for n in range(_BULK_HEADS_N))  # bulk headers by value length


def _parse_simple(data: bytes, out: list[list[bytes]], raws: list[bytes]) -> int:
    """The fast path: split on CRLF once, take requests while each `$len` header matches the
    token after it (a value holding CRLF, an inline command, a partial or bad request: stop and
    return where; the careful parser goes on from there). Two and three arguments (GET, SET,
    HGET...) are unrolled. Only canonical requests pass: headers are compared with the
    encoder's own bytes."""
    parts = data.split(b"\r\n")
    last = len(parts) - 1  # parts[last] follows the final CRLF: never a whole token
    i = 0
    pos = 0
    append = out.append
    append_raw = raws.append
    heads = _BULK_HEADS
    n_heads = _BULK_HEADS_N
    while i < last:
        head = parts[i]
        if head == b"*2":
            end = i + 5
            if end > last:
                return pos
            h1, a1, h2, a2 = parts[i + 1 : end]
            n1 = len(a1)
            n2 = len(a2)
            if n1 >= n_heads or n2 >= n_heads or h1 != heads[n1] or h2 != heads[n2]:
                return pos
            size = 12 + n1 + n2 + len(h1) + len(h2)  # *2 CRLF, then header CRLF value CRLF
            append([a1, a2])
        elif head == b"*3":
            end = i + 7
            if end > last:
                return pos
            h1, a1, h2, a2, h3, a3 = parts[i + 1 : end]
            n1 = len(a1)
            n2 = len(a2)
            n3 = len(a3)
            if (
                n1 >= n_heads
                or n2 >= n_heads
                or n3 >= n_heads
                or h1 != heads[n1]
                or h2 != heads[n2]
                or h3 != heads[n3]
            ):
                return pos
            size = 16 + n1 + n2 + n3 + len(h1) + len(h2) + len(h3)
            append([a1, a2, a3])
        else:
            if head[:1] != b"*" or len(head) > 8 or head[1:2] == b"0":
                return pos
            count = int(head[1:]) if head[1:].isdigit() else 0
            end = i + 1 + 2 * count
            if count <= 0 or end > last:
                return pos
            args = parts[i + 2 : end : 2]
            for h, a in zip(parts[i + 1 : end : 2], args):  # noqa: B905 - equal by construction
                n = len(a)
                if h != (heads[n] if n < n_heads else b"$%d" % n):
                    return pos
            size = sum(map(len, parts[i:end])) + 2 * (end - i)
            append(args)
        append_raw(data[pos : pos + size])
        pos += size
        i = end
    return pos
