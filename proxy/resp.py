"""RESP2/RESP3 codec, pure: bytes in, frames out; no I/O.

Requests from clients are parsed by hiredis (multibulk) or by `parse_inline` (telnet-style lines,
which hiredis rejects). Replies from backends are never decoded on the hot path: `ReplyScanner`
only finds their boundaries so the raw bytes pass through unchanged; `decode_reply` (hiredis) is
used where a merge needs the values. Encoders build the proxy's own replies for either protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import hiredis

# Byte values of RESP type markers.
_BULK = 36  # $
_VERBATIM = 61  # =
_BLOB_ERROR = 33  # !
_ARRAY = 42  # *
_SET = 126  # ~
_PUSH = 62  # >
_MAP = 37  # %
_ATTRIBUTE = 124  # |

MAX_INLINE_BYTES = 64 * 1024  # Redis's PROTO_INLINE_MAX_SIZE

OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
QUEUED = b"+QUEUED\r\n"


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

    __slots__ = ("_buf", "_pending", "_pos")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # scan position inside _buf of the reply being scanned
        self._pending = 0  # elements still owed by the reply being scanned (0: none started)

    def feed(self, data: bytes) -> list[bytes]:
        """Append `data`; return every reply completed by it, in order."""
        buf = self._buf
        if not buf:
            # Fast path: nothing buffered; scan the chunk itself and copy only a leftover tail.
            out, consumed = _split_replies(data)
            if consumed < len(data):
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

    def buffered(self) -> int:
        return len(self._buf)

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


def _split_replies(data: bytes) -> tuple[list[bytes], int]:
    out: list[bytes] = []
    start = 0
    n = len(data)
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
        out.append(data[start:end])
        start = end
    return out, start


def decode_reply(raw: bytes) -> object:
    """Decode one raw reply to Python values (hiredis); errors become hiredis.ReplyError values."""
    reader = hiredis.Reader()
    reader.feed(raw)
    return reader.gets()


MAX_MULTIBULK = 1024 * 1024  # elements in one request (Redis: INT_MAX; hiredis would preallocate)
MAX_BULK_BYTES = 512 * 1024 * 1024  # Redis's proto-max-bulk-len default


class RequestReader:
    """Parses client requests, RESP multibulk and inline, with an explicit state machine.

    `feed` returns the complete requests as lists of bytes arguments; raises ProtocolError with
    Redis's wording on malformed input (the caller answers it and closes the connection), with
    the requests parsed before it in `ProtocolError.requests`.

    A pure-Python parser (not hiredis) because the proxy must know exactly where each request
    ends: to tell an inline command from the rest of a split request, and to refuse a huge
    `*N` header before anything is allocated for it. A large bulk arriving in many chunks is
    not re-parsed per chunk: `_need` says how many bytes must be buffered before trying again.
    """

    __slots__ = ("_buf", "_need", "raws")

    def __init__(self) -> None:
        self._buf = bytearray()  # the start of an incomplete request
        self._need = 0  # do not parse again before _buf holds this many bytes
        # The RESP bytes of each request the last feed() returned, in the same order, so a
        # request bound for one backend is forwarded as received, not re-encoded.
        self.raws: list[bytes] = []

    def feed(self, data: bytes) -> list[list[bytes]]:
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return []
            data = bytes(buf)
            buf.clear()
        out: list[list[bytes]] = []
        raws: list[bytes] = []
        self.raws = raws
        try:
            pos = _parse_requests(data, out, raws)
        except _Incomplete as inc:
            pos = inc.pos
            self._need = inc.need - pos
        except ProtocolError as exc:
            exc.requests = out
            raise
        else:
            self._need = 0
        if pos < len(data):
            self._buf = bytearray(memoryview(data)[pos:])
        return out


class _Incomplete(Exception):
    """The request starting at `pos` needs at least `need` bytes (absolute) of the chunk."""

    def __init__(self, pos: int, need: int) -> None:
        self.pos = pos
        self.need = need


_BULK_HEADS_N = 4096
_BULK_HEADS = tuple(b"$%d" % n for n in range(_BULK_HEADS_N))  # bulk headers by value length


def _parse_simple(data: bytes, out: list[list[bytes]], raws: list[bytes]) -> int:
    """The fast path: split on CRLF once, take requests while each `$len` header matches the
    token after it (a value holding CRLF, an inline command, a partial or bad request: stop and
    return where; the careful parser goes on from there)."""
    parts = data.split(b"\r\n")
    last = len(parts) - 1  # parts[last] follows the final CRLF: never a whole token
    i = 0
    pos = 0
    append = out.append
    while i < last:
        head = parts[i]
        if head[:1] != b"*" or len(head) > 8:
            return pos
        count = int(head[1:]) if head[1:].isdigit() else 0
        end = i + 1 + 2 * count
        if count <= 0 or end > last:
            return pos
        args = parts[i + 2 : end : 2]
        for h, a in zip(parts[i + 1 : end : 2], args):  # noqa: B905 - equal by construction
            size = len(a)
            if h != (_BULK_HEADS[size] if size < _BULK_HEADS_N else b"$%d" % size):
                return pos
        size = sum(map(len, parts[i:end])) + 2 * (end - i)
        append(args)
        raws.append(data[pos : pos + size])
        pos += size
        i = end
    return pos


def _header(data: bytes, at: int, start: int, what: str, length: str) -> tuple[int, int]:
    """The number in the `*N` / `$N` line at `at` and where that line ends; Redis's errors."""
    eol = data.find(b"\r\n", at)
    if eol < 0:
        if len(data) - at > 32:
            raise ProtocolError(f"too big {what}")
        raise _Incomplete(start, len(data) + 1)
    try:
        return int(data[at + 1 : eol]), eol
    except ValueError:
        raise ProtocolError(f"invalid {length}") from None


def _parse_requests(data: bytes, out: list[list[bytes]], raws: list[bytes]) -> int:
    """Append every complete request of `data` to `out` (its bytes to `raws`); return where the
    unparsed rest starts."""
    pos = _parse_simple(data, out, raws)
    n = len(data)
    find = data.find
    while pos < n:
        if data[pos] != 42:  # not '*': an inline command line
            nl = find(b"\n", pos)
            if nl < 0:
                if n - pos > MAX_INLINE_BYTES:
                    raise ProtocolError("too big inline request")
                raise _Incomplete(pos, n + 1)
            args = parse_inline(data[pos:nl])
            if args:
                out.append(args)
                raws.append(encode_request(args))
            pos = nl + 1
            continue
        count, eol = _header(data, pos, pos, "mbulk count string", "multibulk length")
        if count > MAX_MULTIBULK:
            raise ProtocolError("invalid multibulk length")
        p = eol + 2
        if count <= 0:
            pos = p  # Redis ignores *0 and *-1
            continue
        args = []
        append = args.append
        for _ in range(count):
            if p >= n:
                raise _Incomplete(pos, p + 1)
            if data[p] != 36:  # '$'
                raise ProtocolError(f"expected '$', got '{chr(data[p])}'")
            size, eol = _header(data, p, pos, "bulk count string", "bulk length")
            if size < 0 or size > MAX_BULK_BYTES:
                raise ProtocolError("invalid bulk length")
            start = eol + 2
            end = start + size
            if end + 2 > n:
                raise _Incomplete(pos, end + 2)
            append(data[start:end])
            p = end + 2
        out.append(args)
        raws.append(data[pos:p])
        pos = p
    return pos


def parse_inline(line: bytes) -> list[bytes]:
    """Split one inline command line like Redis's sdssplitargs (quotes and escapes)."""
    line = line.rstrip(b"\r")
    if b'"' not in line and b"'" not in line:
        return line.split()
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i : i + 1].isspace():
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        quote = 0  # 0 none, 1 double, 2 single
        while i < n:
            c = line[i]
            if quote == 1:
                if c == 92 and i + 3 < n and line[i + 1] == 120 and _ishex(line[i + 2 : i + 4]):
                    cur.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    cur.append(_ESCAPES.get(line[i], line[i]))
                elif c == 34:
                    if i + 1 < n and not line[i + 1 : i + 2].isspace():
                        raise ProtocolError("unbalanced quotes in request")
                    quote = 0
                    i += 1
                    break
                else:
                    cur.append(c)
            elif quote == 2:
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                    cur.append(39)
                elif c == 39:
                    if i + 1 < n and not line[i + 1 : i + 2].isspace():
                        raise ProtocolError("unbalanced quotes in request")
                    quote = 0
                    i += 1
                    break
                else:
                    cur.append(c)
            elif c in b" \t\n\r":
                break
            elif c == 34:
                quote = 1
            elif c == 39:
                quote = 2
            else:
                cur.append(c)
            i += 1
        if quote:
            raise ProtocolError("unbalanced quotes in request")
        args.append(bytes(cur))


_ESCAPES = {110: 10, 114: 13, 116: 9, 98: 8, 97: 7}


def _ishex(b: bytes) -> bool:
    return len(b) == 2 and all(c in b"0123456789abcdefABCDEF" for c in b)


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
