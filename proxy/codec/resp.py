"""RESP2/RESP3 codec, pure: bytes in, frames out; no I/O.

Client requests are parsed in proxy/codec/request.py. Replies from backends are never decoded on the
hot path: `ReplyScanner`
only finds their boundaries so the raw bytes pass through unchanged; `decode_reply` (hiredis) is
used where a merge needs the values. Encoders build the proxy's own replies for either protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

import hiredis

from proxy.codec.scan import COMPILED, take_replies

# Byte values of RESP type markers.
_BULK: Final = 36  # $
_VERBATIM: Final = 61  # =
_BLOB_ERROR: Final = 33  # !
_ARRAY: Final = 42  # *
_SET: Final = 126  # ~
_PUSH: Final = 62  # >
_MAP: Final = 37  # %
_ATTRIBUTE: Final = 124  # |


OK: Final = b"+OK\r\n"
PONG: Final = b"+PONG\r\n"


class ProtocolError(Exception):
    """Malformed input from a peer; the message is the text after `-ERR Protocol error: `.

    `requests` holds the complete requests parsed before the malformed one: they are answered
    before the error, as Redis does.
    """

    def __init__(self, message: str, requests: list[list[bytes]] | None = None) -> None:
        super().__init__(message)
        self.requests: list[list[bytes]] = requests or []


class ReplyScanner:
    """Splits a byte stream of RESP replies into the raw bytes of each complete reply.

    The scan state (position and the number of elements still owed by open aggregates) survives
    across `feed` calls, so a large array or a 16 MB bulk string arriving in many chunks is
    scanned once, not once per chunk.
    """

    __slots__ = ("_big", "_buf", "_have", "_pending", "_pos", "views")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # scan position inside _buf of the reply being scanned
        self._pending = 0  # elements still owed by the reply being scanned (0: none started)
        # A big bulk string split over reads goes into a buffer of its exact size: later reads
        # land there directly (room() and filled(), for a BufferedProtocol) or are copied in
        # (feed); the full buffer is the reply, handed on with no further copy.
        self._big: bytearray | None = None
        self._have = 0  # bytes of _big filled so far
        # True when the last feed's replies may include memoryviews (big replies inside a read,
        # not copied out of it: see _scan_replies); typed bytes, as they are bytes-like.
        self.views = False

    def feed(self, data: bytes) -> list[bytes]:
        """Append `data`; return every reply completed by it, in order."""
        self.views = len(data) >= _VIEW_MIN
        if self._big is not None:
            return self._fill(data)
        buf = self._buf
        if not buf:
            # Fast path: nothing buffered; scan the chunk itself and copy only a leftover tail.
            out, consumed = _split_replies(data)
            if consumed < len(data):
                end = _bulk_end(data, consumed)
                if end - consumed >= _COLLECT_MIN:
                    big = self._big = bytearray(end - consumed)
                    have = self._have = len(data) - consumed
                    big[:have] = memoryview(data)[consumed:]
                    return out
                self._buf = bytearray(memoryview(data)[consumed:])
                self._pos = 0
                self._pending = 0
                self._advance()
            return out
        buf += data
        end = self._advance()
        if not end:
            return []
        with memoryview(buf) as view:
            first = bytes(view[:end])
            rest = bytes(view[end:])
        self._buf = bytearray()
        if not rest:
            return [first]
        out = self.feed(rest)
        out.insert(0, first)
        return out

    def room(self) -> memoryview | None:
        """Where the next read may land directly: the rest of a big bulk string (so a read never
        runs past it); None when no big bulk string is under way."""
        big = self._big
        return None if big is None else memoryview(big)[self._have :]

    def filled(self, nbytes: int) -> list[bytes]:
        """`nbytes` were read into room(): the bulk string, once complete (a bytearray in the
        pure build; a copy as bytes in the compiled one: see filled_view)."""
        big = self.filled_view(nbytes)
        if big is None:
            return []
        if not _VIEWS:
            return [bytes(big)]
        self.views = True  # a bytearray, bytes-like as a memoryview is
        return [big]  # type: ignore[list-item]

    def filled_view(self, nbytes: int) -> bytearray | None:
        """`nbytes` were read into room(): the bulk string, once complete: the buffer it was
        read into, not a copy (BackendConnection hands it to owners that only write it out)."""
        big = self._big
        assert big is not None
        self._have += nbytes
        if self._have < len(big):
            return None
        self._big = None
        self._have = 0
        return big

    def take_big(self, read: memoryview, nbytes: int) -> tuple[bytearray | None, int]:
        """A read (the first `nbytes` of `read`) that begins with a big bulk string while
        nothing is buffered: its bytes are copied once, into a buffer of the reply's own size
        (the rest of it is read there: room()), not first into bytes for feed. Returns the
        reply once complete (else None), and where the bytes after it begin in the read
        (`nbytes` when none); (None, -1) when the read does not begin with a big bulk string:
        feed it as usual."""
        if self._buf or self._big is not None or nbytes < _COLLECT_MIN or read[0] != _BULK:
            return None, -1
        end = _bulk_end(bytes(read[:24]), 0)
        if end < _COLLECT_MIN:
            return None, -1
        if end <= nbytes:  # the whole reply is in this read
            return bytearray(read[:end]), end
        big = bytearray(end)
        big[:nbytes] = read[:nbytes]
        self._big = big
        self._have = nbytes
        return None, nbytes

    def _fill(self, data: bytes) -> list[bytes]:
        """The next read of a big bulk string, fed as bytes: copied into place."""
        big = self._big
        assert big is not None
        take = min(len(big) - self._have, len(data))
        big[self._have : self._have + take] = memoryview(data)[:take]
        out = self.filled(take)
        if take == len(data):
            return out
        rest = self.feed(data[take:])
        self.views = True  # out is the finished bytearray, whatever the rest held
        return out + rest

    def buffered(self) -> int:
        return len(self._buf) + self._have

    def _advance(self) -> int:
        """Advance the saved scan; return the end of a completed reply, or 0 if incomplete."""
        end, pos, pending = _scan(self._buf, self._pos, self._pending or 1)
        if end >= 0:
            self._pos = 0
            self._pending = 0
            return end
        self._pos = pos
        self._pending = pending
        return 0


_COLLECT_MIN: Final = 1 << 14  # bulk strings at least this long, split over reads, go to _big
# Compiled code (mypyc) checks at run time that a `bytes` is bytes: the compiled build copies big
# replies out of the read (one copy), the pure build hands them on as views of it.
_VIEWS: Final = not COMPILED
_VIEW_MIN: Final = 1 << 14  # replies at least this long inside one read may be memoryviews of it


def _bulk_end(data: bytes, start: int) -> int:
    """Where the bulk string starting at `start` ends (its header must be in `data`), else -1."""
    if data[start] != _BULK:
        return -1
    eol = data.find(b"\r\n", start, start + 24)
    if eol < 0:
        return -1
    size = int(data[start + 1 : eol])
    return eol + 4 + size if size >= 0 else -1


def _scan(buf: bytes | bytearray, pos: int, pending: int) -> tuple[int, int, int]:
    """Scan elements from `pos` while `pending` are owed.

    Returns (end, pos, pending): end >= 0 when the reply completed; else end is -1 and (pos,
    pending) is where to resume once more bytes arrived.
    """
    n = len(buf)
    find = buf.find
    while pending:
        if pos >= n:
            return -1, pos, pending
        eol = find(b"\r\n", pos)
        if eol < 0:
            return -1, pos, pending
        t = buf[pos]
        if t in (36, 61, 33):  # $ = ! : a length-prefixed string
            size = int(buf[pos + 1 : eol])
            nxt = eol + 4 + size if size >= 0 else eol + 2
            if nxt > n:
                return -1, pos, pending
            pos = nxt
            pending -= 1
        elif t in (42, 126, 62):  # * ~ > : an aggregate of `count` elements
            count = int(buf[pos + 1 : eol])
            pending += count - 1 if count > 0 else -1
            pos = eol + 2
        elif t == _MAP:
            pending += 2 * int(buf[pos + 1 : eol]) - 1
            pos = eol + 2
        elif t == _ATTRIBUTE:
            # An attribute map precedes the value it annotates: owe its pairs and the value.
            pending += 2 * int(buf[pos + 1 : eol])
            pos = eol + 2
        else:
            pos = eol + 2
            pending -= 1
    return pos, pos, 0


_SPLIT_MAX: Final = (
    1 << 16
)  # larger chunks are mostly big values: splitting would copy them once more
_BULK_SIZES: Final = {b"$%d" % n: n for n in range(-1, 4096)}  # bulk header -> value length
_ONE_LINE: Final = (
    b"+",
    b":",
    b"-",
)  # first bytes of the one-line replies the split fast path takes


def _split_replies(data: bytes) -> tuple[list[bytes], int]:
    """The complete replies at the start of `data` (raw bytes each) and where they end.

    A fast path takes the common replies (bulk strings, nil, one-line replies): by splitting
    the chunk on CRLF once in Python (_split_lines), by reading headers byte by byte in the
    compiled build (codec/scan.take_replies), which is faster per GET reply than the scan
    (figures in benchmarks/README.md). Anything else (an aggregate, RESP3 types, a partial
    reply) is left to the scan."""
    out, pos = take_replies(data, _VIEW_MIN) if COMPILED else _split_lines(data)
    return (out, pos) if pos == len(data) else _scan_replies(data, pos, out)


def _split_lines(data: bytes) -> tuple[list[bytes], int]:
    """_split_replies's fast path in Python: split on CRLF once, take bulk strings whose value
    is exactly the token after their header (so the value holds no CRLF), nil bulk strings and
    one-line replies; stop at anything else."""
    if len(data) > _SPLIT_MAX:
        return [], 0
    parts = data.split(b"\r\n")
    last = len(parts) - 1  # parts[last] follows the final CRLF: never a whole token
    sizes = _BULK_SIZES
    out: list[bytes] = []
    append = out.append
    i = 0
    pos = 0
    while i < last:
        head = parts[i]
        size = sizes.get(head)
        if size is not None:
            if size < 0:  # $-1
                end = pos + 5
                i += 1
            elif i + 1 < last and len(parts[i + 1]) == size:
                end = pos + len(head) + size + 4
                i += 2
            else:
                break
        elif head[:1] in _ONE_LINE:
            end = pos + len(head) + 2
            i += 1
        else:
            break
        append(data[pos:end])
        pos = end
    return out, pos


def _scan_replies(data: bytes, start: int, out: list[bytes]) -> tuple[list[bytes], int]:
    """_split_replies's careful half: one reply at a time from `start`, appended to `out`.

    A reply of at least _VIEW_MIN bytes and at least a quarter of `data` is a memoryview of
    `data`, not a copy (it keeps at most 4x its size alive); the caller converts it to bytes for
    anyone who does more with it than write it out (ReplyOwner.takes_views)."""
    n = len(data)
    view_min = max(_VIEW_MIN, n >> 2)
    while start < n:
        t = data[start]
        if t == 43 or t == 58 or t == 45:  # + : -  (the common single-line replies)
            eol = data.find(b"\r\n", start)
            if eol < 0:
                break
            end = eol + 2
        elif t == _BULK:
            eol = data.find(b"\r\n", start)
            if eol < 0:
                break
            size = int(data[start + 1 : eol])
            end = eol + 4 + size if size >= 0 else eol + 2
            if end > n:
                break
        else:
            end = _scan(data, start, 1)[0]
            if end < 0:
                break
        if end - start < view_min or end - start == n or not _VIEWS:  # n: no copy made anyway
            out.append(data[start:end])
        else:
            out.append(memoryview(data)[start:end])  # type: ignore[arg-type]  # see docstring
        start = end
    return out, start


def is_error(reply: bytes) -> bool:
    """An error reply: a simple error (`-`) or a RESP3 blob error (`!`)."""
    return reply[:1] in (b"-", b"!")


def decode_reply(raw: bytes) -> object:
    """Decode one raw reply to Python values (hiredis); errors become hiredis.ReplyError values."""
    reader = hiredis.Reader()
    reader.feed(raw)
    return reader.gets()


# ---------------------------------------------------------------------------------------------
# Encoders. `resp3` selects RESP3 forms where they differ from RESP2.


def encode_request(args: Sequence[bytes]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join([b"$%d\r\n%s\r\n" % (len(a), a) for a in args])


def encode_simple(text: str) -> bytes:
    return b"+" + text.encode() + b"\r\n"


def encode_error(text: str) -> bytes:
    """`text` starts with the error code (ERR, NOAUTH, CROSSSLOT...); newlines are flattened."""
    return b"-" + text.replace("\r", " ").replace("\n", " ").encode() + b"\r\n"


def encode_int(value: int) -> bytes:
    return b":%d\r\n" % value


def encode_bulk(value: bytes | None, resp3: bool = False) -> bytes:
    if value is None:
        return b"_\r\n" if resp3 else b"$-1\r\n"
    return b"$%d\r\n%s\r\n" % (len(value), value)


def encode_null(resp3: bool) -> bytes:
    return b"_\r\n" if resp3 else b"$-1\r\n"


def encode_array_raw(items: Sequence[bytes]) -> bytes:
    """An array of already-encoded elements."""
    return b"*%d\r\n" % len(items) + b"".join(items)


def encode_map_raw(pairs: Iterable[tuple[bytes, bytes]], count: int, resp3: bool) -> bytes:
    """A map of already-encoded keys and values: RESP3 `%`, RESP2 a flat array."""
    head = b"%%%d\r\n" % count if resp3 else b"*%d\r\n" % (2 * count)
    return head + b"".join(k + v for k, v in pairs)


def encode_value(value: object, resp3: bool = False) -> bytes:
    """Encode a decoded value (as hiredis returns them) back to RESP for a client."""
    if value is None:
        return encode_null(resp3)
    if isinstance(value, bytes):
        return encode_bulk(value)
    if isinstance(value, str):
        return encode_bulk(value.encode())
    if isinstance(value, bool):
        return (b"#t\r\n" if value else b"#f\r\n") if resp3 else encode_int(int(value))
    if isinstance(value, int):
        return encode_int(value)
    if isinstance(value, float):
        return b",%s\r\n" % repr(value).encode() if resp3 else encode_bulk(repr(value).encode())
    if isinstance(value, hiredis.ReplyError):
        return encode_error(str(value))
    if isinstance(value, dict):
        return encode_map_raw(
            ((encode_value(k, resp3), encode_value(v, resp3)) for k, v in value.items()),
            len(value),
            resp3,
        )
    if isinstance(value, list | tuple | set | frozenset):
        return encode_array_raw([encode_value(v, resp3) for v in value])
    raise TypeError(f"cannot encode {type(value).__name__}")


def split_aggregate(raw: bytes) -> list[bytes] | None:
    """The raw elements of an array/set/push reply (a map gives keys and values in turn).

    None when `raw` is not an aggregate (an error, a null array...): the caller passes it on.
    """
    t = raw[0] if raw else 0
    if t not in (_ARRAY, _SET, _PUSH, _MAP):
        return None
    eol = raw.find(b"\r\n")
    count = int(raw[1:eol])
    if count < 0:
        return None
    if t == _MAP:
        count *= 2
    out: list[bytes] = []
    pos = eol + 2
    for _ in range(count):
        end = _scan(raw, pos, 1)[0]
        if end < 0:
            raise ProtocolError("truncated aggregate reply")
        out.append(raw[pos:end])
        pos = end
    return out


def parse_int_reply(raw: bytes) -> int | None:
    """The value of a `:n` reply, else None."""
    if raw[:1] == b":":
        return int(raw[1:-2])
    return None
