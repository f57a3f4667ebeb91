"""proxy.request: the request parser against the encoder, cut at every kind of boundary.

The proxy forwards each request's bytes as received (`RequestReader.raws`), so a wrong boundary
would send one client's bytes as another command: every test checks the raw bytes as well as the
arguments.
"""

from __future__ import annotations

import random

import pytest

from proxy.request import MAX_MULTIBULK, RequestReader
from proxy.resp import ProtocolError, encode_request

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
        requests += got
        raws += reader.raws
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
