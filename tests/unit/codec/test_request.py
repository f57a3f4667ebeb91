"""proxy.codec.request: the request parser against the encoder, cut at every kind of boundary.

The proxy forwards each request's bytes as received (`RequestReader.raws`), so a wrong boundary
would send one client's bytes as another command: every test checks the raw bytes as well as the
arguments.
"""

from __future__ import annotations

import random

import pytest

from proxy.codec.request import (
    MAX_MULTIBULK,
    STREAM_MIN_BYTES,
    RequestReader,
    _parse_simple,
)
from proxy.codec.resp import ProtocolError, encode_request
from proxy.codec.scan import scan_requests
from tests.support.wire import random_prefixes

# Values that look like protocol: CRLF inside, headers, a bare `*2`, lengths at table edges.
TRICKY = [
    b"",
    b"\r\n",
    b"a\r\nb",
    b"$3",
    b"*2\r\n$3\r\nGET",
    b"\r\n*2\r\n",
    b"x" * 4095,
    b"y" * 4096,
    b"z" * 70000,
    bytes(range(256)),
]


def random_args(rng: random.Random) -> list[bytes]:
    count = rng.choice([1, 2, 2, 2, 3, 3, 3, 4, 5, 9])
    args = [rng.choice([b"GET", b"SET", b"HSET", b"MGET", b"PING"])]
    for _ in range(count - 1):
        if rng.random() < 0.2:
            args.append(rng.choice(TRICKY))
        else:
            args.append(b"k" * rng.randrange(0, 40))
    return args


def feed_in_chunks(data: bytes, cuts: list[int]) -> tuple[list[list[bytes]], list[bytes]]:
    reader = RequestReader()
    requests: list[list[bytes]] = []
    raws: list[bytes] = []
    start = 0
    for cut in [*cuts, len(data)]:
        got = reader.feed(data[start:cut])
        assert len(reader.raws) == len(got)
        for raw, args in zip(reader.raws, got, strict=True):
            assert raw in (b"", encode_request(args))  # kept only when canonical and whole
        requests += got
        raws += [raw or encode_request(args) for raw, args in zip(reader.raws, got, strict=True)]
        start = cut
    return requests, raws


@pytest.mark.parametrize("seed", range(40))
def test_random_streams_cut_anywhere(seed: int) -> None:
    rng = random.Random(seed)
    sent = [random_args(rng) for _ in range(rng.randrange(1, 60))]
    data = b"".join(encode_request(a) for a in sent)
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(0, 12))))
    requests, raws = feed_in_chunks(data, cuts)
    assert requests == sent
    assert raws == [encode_request(a) for a in sent]


def test_every_cut_of_a_short_pipeline() -> None:
    sent = [[b"SET", b"a\r\nb", b"v"], [b"GET", b"k"], [b"PING"], [b"MGET", b"a", b"b", b"c"]]
    data = b"".join(encode_request(a) for a in sent)
    for cut in range(1, len(data)):
        requests, raws = feed_in_chunks(data, [cut])
        assert requests == sent, cut
        assert b"".join(raws) == data, cut


def test_inline_between_multibulk_requests() -> None:
    data = encode_request([b"GET", b"a"]) + b"PING\r\n" + encode_request([b"SET", b"b", b"c"])
    requests, raws = feed_in_chunks(data, [])
    assert requests == [[b"GET", b"a"], [b"PING"], [b"SET", b"b", b"c"]]
    assert raws[0] == encode_request([b"GET", b"a"])
    assert raws[2] == encode_request([b"SET", b"b", b"c"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"*2\r\n$3\r\nGET\r\n$x\r\n", "invalid bulk length"),
        (b"*2\r\n+GET\r\n", "expected '$', got '+'"),
        (b"*%d\r\n" % (MAX_MULTIBULK + 1), "invalid multibulk length"),
        (b"*1\r\n$%d\r\n" % (512 * 1024 * 1024 + 1), "invalid bulk length"),
    ],
)
def test_malformed_requests_keep_the_ones_before(data: bytes, message: str) -> None:
    good = encode_request([b"GET", b"a"])
    with pytest.raises(ProtocolError) as info:
        RequestReader().feed(good + data)
    assert str(info.value) == message
    assert info.value.requests == [[b"GET", b"a"]]


def test_a_header_that_lies_about_its_length_is_not_taken_by_the_fast_path() -> None:
    # `$4` before a 3-byte token: the split fast path must not accept it; the careful parser
    # reads 4 bytes (including the CR), as Redis does, and finds the stream broken after it.
    data = b"*2\r\n$3\r\nGET\r\n$4\r\nabc\r\n"
    reader = RequestReader()
    assert reader.feed(data) == []
    assert reader.feed(b"\r\n") == [[b"GET", b"abc\r"]]


# -- exactly what Redis accepts (string2ll), and only canonical bytes forwarded -----------------
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"*1\r\n$+4\r\nPING\r\n", "invalid bulk length"),
        (b"*1\r\n$04\r\nPING\r\n", "invalid bulk length"),
        (b"*1\r\n$ 4\r\nPING\r\n", "invalid bulk length"),
        (b"*1\r\n$4 \r\nPING\r\n", "invalid bulk length"),
        (b"*1\r\n$1_0\r\n0123456789\r\n", "invalid bulk length"),
        (b"*1\r\n$-0\r\n", "invalid bulk length"),
        (b"*1\r\n$\r\n", "invalid bulk length"),
        (b"*02\r\n$3\r\nGET\r\n$1\r\nk\r\n", "invalid multibulk length"),
        (b"*+2\r\n$3\r\nGET\r\n$1\r\nk\r\n", "invalid multibulk length"),
        (b"* 2\r\n$3\r\nGET\r\n$1\r\nk\r\n", "invalid multibulk length"),
        (b"*-0\r\n", "invalid multibulk length"),
        (b"*1_0\r\n", "invalid multibulk length"),
    ],
)
def test_lengths_follow_redis_string2ll(data: bytes, message: str) -> None:
    for cut in range(1, len(data) + 1):  # whole, and cut at every byte
        reader = RequestReader()
        with pytest.raises(ProtocolError) as info:
            reader.feed(data[:cut])
            reader.feed(data[cut:])
        assert str(info.value) == message


@pytest.mark.parametrize(
    ("data", "args"),
    [
        # Redis skips the two bytes after a value and after a header's CR without reading them.
        (b"*2\r\n$3\r\nGET\r\n$1\r\nkXY", [b"GET", b"k"]),
        (b"*2\rx$3\r\nGET\r\n$1\r\nk\r\n", [b"GET", b"k"]),
        (b"*2\r\n$3\ryGET\r\n$1\r\nk\r\n", [b"GET", b"k"]),
        (b"*-1\r\n*1\r\n$4\r\nPING\r\n", [b"PING"]),
        (b"*0\r\n*1\r\n$4\r\nPING\r\n", [b"PING"]),
    ],
)
def test_accepted_forms_are_forwarded_canonical(data: bytes, args: list[bytes]) -> None:
    for cut in range(1, len(data) + 1):
        requests, raws = feed_in_chunks(data, [cut] if cut < len(data) else [])
        assert requests == [args], cut
        assert raws == [encode_request(args)], cut


# -- before AUTH: Redis's limits, one request at a time ----------------------------------------
def test_unauthenticated_limits() -> None:
    reader = RequestReader()
    reader.authed = False
    with pytest.raises(ProtocolError, match="unauthenticated multibulk length"):
        reader.feed(encode_request([b"MGET", *[b"k"] * 10]))
    reader = RequestReader()
    reader.authed = False
    assert reader.feed(encode_request([b"AUTH", *[b"p"] * 9])) == [[b"AUTH", *[b"p"] * 9]]
    with pytest.raises(ProtocolError, match="unauthenticated bulk length"):
        reader.feed(b"*2\r\n$3\r\nSET\r\n$16385\r\n")
    reader = RequestReader()
    reader.authed = False
    assert reader.feed(encode_request([b"SET", b"k" * 16384])) == [[b"SET", b"k" * 16384]]


def test_unauthenticated_reader_hands_out_one_request_per_feed() -> None:
    # AUTH, then a request too big before AUTH, in one read: parsed after AUTH has run.
    big = encode_request([b"MGET", *[b"k%d" % i for i in range(50)]])
    reader = RequestReader()
    reader.authed = False
    assert reader.feed(encode_request([b"AUTH", b"pw"]) + big + b"PING\r\n") == [[b"AUTH", b"pw"]]
    assert reader.has_buffered()
    reader.authed = True
    assert reader.feed(b"") == [[b"MGET", *[b"k%d" % i for i in range(50)]], [b"PING"]]
    assert reader.raws[0] == big
    assert not reader.has_buffered()


# -- linear in the bytes received --------------------------------------------------------------
@pytest.mark.pure_only  # patches a compiled module's internals
def test_a_huge_request_in_small_reads_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import proxy.codec.request as request

    calls = 0
    real = request.strict_int

    def counting(text: bytes) -> int | None:
        nonlocal calls
        calls += 1
        return real(text)

    monkeypatch.setattr(request, "strict_int", counting)
    keys = [b"key:%d" % i for i in range(100_000)]
    data = encode_request([b"MGET", *keys])
    reader = RequestReader()
    got: list[list[bytes]] = []
    held = []
    for at in range(0, len(data), 4096):
        got += reader.feed(data[at : at + 4096])
        held.append(reader.buffered_bytes())
    assert got == [[b"MGET", *keys]]
    assert reader.raws == [b""]  # split over reads: not encoded whole (MGET is split anyway)
    # Each header was read once: no re-parsing of the partial request from its start.
    assert calls == 1 + 1 + len(keys)
    assert max(held) < len(data)  # holds the arguments, not a growing copy of the input
    assert reader.buffered_bytes() == 0


def test_a_big_value_in_small_reads() -> None:
    value = bytes(range(256)) * 4096  # 1 MiB holding CR, LF and headers
    data = encode_request([b"SET", b"k", value]) + encode_request([b"GET", b"k"])
    requests, raws = feed_in_chunks(data, list(range(1000, len(data), 65536)))
    assert requests == [[b"SET", b"k", value], [b"GET", b"k"]]
    assert b"".join(raws) == data


def test_a_header_dripped_byte_by_byte() -> None:
    data = encode_request([b"GET", b"k" * 20]) + b"PING\r\n"
    requests, raws = feed_in_chunks(data, list(range(1, len(data))))
    assert requests == [[b"GET", b"k" * 20], [b"PING"]]
    assert b"".join(raws) == encode_request([b"GET", b"k" * 20]) + encode_request([b"PING"])


# -- streamed values (RequestReader.stream_gate) -------------------------------------------
class Sink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.ended = False

    def on_body(self, chunk: bytes) -> None:
        assert not self.ended
        self.chunks.append(chunk)

    def on_end(self) -> None:
        self.ended = True


@pytest.mark.parametrize("step", [1000, 65536, 3_000_000])
def test_a_big_last_argument_streams_to_the_sink(step: int) -> None:
    from proxy.codec.request import STREAM_MIN_BYTES

    value = bytes(range(256)) * (STREAM_MIN_BYTES // 128)
    data = (
        encode_request([b"GET", b"a"])
        + encode_request([b"SET", b"k", value])
        + encode_request([b"GET", b"k"])
    )
    reader = RequestReader()
    heads: list[list[bytes]] = []
    reader.stream_gate = lambda head: heads.append(list(head)) is None
    sink = Sink()
    got: list[list[bytes]] = []
    for at in range(0, len(data), step):
        got += reader.feed(data[at : at + step])
        if reader.stream_args is not None and not sink.chunks and not sink.ended:
            assert reader.stream_args == [b"SET", b"k"] and reader.stream_size == len(value)
            assert got == [[b"GET", b"a"]]  # what came before, handed out first
            reader.begin_stream(sink)
            got += reader.feed(b"")
    assert heads == [[b"SET", b"k"]]
    assert sink.ended and b"".join(sink.chunks) == value
    assert got == [[b"GET", b"a"], [b"GET", b"k"]]
    assert reader.buffered_bytes() == 0


def test_a_refusing_gate_or_a_later_argument_assembles_as_before() -> None:
    from proxy.codec.request import STREAM_MIN_BYTES

    value = b"x" * STREAM_MIN_BYTES
    for gate, args in [
        (lambda head: False, [b"SET", b"k", value]),
        (lambda head: True, [b"SET", b"k", value, b"EX", b"10"]),  # not the last argument
    ]:
        reader = RequestReader()
        reader.stream_gate = gate
        requests, _ = [], None
        data = encode_request(args)
        for at in range(0, len(data), 65536):
            requests += reader.feed(data[at : at + 65536])
        assert requests == [args] and reader.stream_args is None


def _both_fast_paths(data: bytes) -> tuple[list[list[bytes]], list[bytes], int]:
    """The split fast path (pure build) and the byte scan (compiled build) on `data`: the same
    requests, raws and stopping place, whichever build runs the test."""
    split_out: list[list[bytes]] = []
    split_raws: list[bytes] = []
    split_pos = _parse_simple(data, split_out, split_raws)
    scan_out: list[list[bytes]] = []
    scan_raws: list[bytes] = []
    scan_pos = scan_requests(data, scan_out, scan_raws, MAX_MULTIBULK, STREAM_MIN_BYTES)
    # The split stops at a value holding CRLF, where the scan goes on; the scan stops at a value
    # of STREAM_MIN_BYTES, which the split takes: up to the first stop, both took the same.
    short = min(len(split_out), len(scan_out))
    assert scan_out[:short] == split_out[:short]
    assert scan_raws[:short] == split_raws[:short]
    assert split_pos == sum(map(len, split_raws))
    assert scan_pos == sum(map(len, scan_raws))
    for args, raw in zip(scan_out, scan_raws, strict=True):
        assert raw == encode_request(args)
    # What the scan left, the careful parser takes as it would have from the split's stop.
    try:
        whole: list[list[bytes]] | str = RequestReader().feed(data)
    except ProtocolError as exc:
        whole = str(exc)
    try:
        tail: list[list[bytes]] | str = scan_out + RequestReader().feed(data[scan_pos:])
    except ProtocolError as exc:
        tail = str(exc)
    assert tail == whole
    return scan_out, scan_raws, scan_pos


@pytest.mark.parametrize("seed", range(30))
def test_split_and_scan_fast_paths_take_the_same_requests(seed: int) -> None:
    rng = random.Random(seed)
    data = b"".join(encode_request(random_args(rng)) for _ in range(rng.randrange(1, 30)))
    for prefix in random_prefixes(rng, data):
        _both_fast_paths(prefix)


@pytest.mark.parametrize(
    "data",
    [
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        b"*0\r\n*1\r\n$4\r\nPING\r\n",
        b"*01\r\n$4\r\nPING\r\n",
        b"*1\r\n$04\r\nPING\r\n",
        b"*1\r\n$-1\r\n",
        b"*-1\r\n",
        b"*1\n$4\r\nPING\r\n",
        b"*1\r\n$4\nPING\r\n",
        b"*1\r\n$4\r\nPING\r\r",
        b"*1\r\n$3\r\nPING\r\n",
        b"*1\r\n$5\r\nPING\r\n",
        b"*2\r\n$3\r\nGET\r\n",
        b"*12345678\r\n",
        b"*1\r\n+PING\r\n",
        b"PING\r\n*1\r\n$4\r\nPING\r\n",
        b"*1\r\n$4\r\nPING\r\nPING\r\n",
        b"*1\r\n$1048576\r\n" + b"v" * 1048576 + b"\r\n",
        b"*2\r\n$3\r\nSET\r\n$1048575\r\n" + b"v" * 1048575 + b"\r\n",
        b"*2\r\n$3\r\nGET\r\n$4\r\na\r\nb\r\n",
        b"*1\r\n$0\r\n\r\n",
    ],
)
def test_fast_paths_at_their_edges(data: bytes) -> None:
    _both_fast_paths(data)
