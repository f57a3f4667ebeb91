"""proxy.codec.resp.ReplyScanner: reply boundaries in a backend's byte stream, cut anywhere.

Replies are matched to requests by position, so a wrong boundary would hand one client another
client's reply: every test compares the raw bytes of each reply with what was sent (the
generator knows where each reply ends; hiredis cannot say, as it lacks RESP3's blob errors and
reads an attribute as a reply of its own).
"""

from __future__ import annotations

import random

import pytest

from proxy.codec.resp import _VIEW_MIN, ReplyScanner, _scan_replies, _split_lines
from proxy.codec.scan import take_replies
from tests.support.wire import random_prefixes

# Values that look like protocol: CRLF inside, headers, CR or LF at the edges, table-edge sizes.
TRICKY = [
    b"",
    b"\r\n",
    b"a\r\nb",
    b"ab\r",
    b"\nab",
    b"\r",
    b"$3",
    b"+OK",
    b"*2\r\n$3\r\nGET",
    b"x" * 4095,
    b"y" * 4096,
    b"z" * 70000,
    bytes(range(256)),
]


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def random_reply(rng: random.Random, depth: int = 0) -> bytes:
    """One RESP2 or RESP3 reply, weighted towards what GET/SET/INCR answer."""
    kind = rng.choice("bbbbbnoie-:_#,(=!%*~>|" if depth < 3 else "bbno:")
    if kind == "b":
        if rng.random() < 0.3:
            return bulk(rng.choice(TRICKY))
        return bulk(b"v" * rng.randrange(0, 80))
    if kind == "n":
        return b"$-1\r\n"
    if kind == "o":
        return b"+OK\r\n"
    if kind in "i:":
        return b":%d\r\n" % rng.randrange(-5, 10**12)
    if kind == "e":
        return b"-ERR wrong type\r\n"
    if kind == "-":
        return b"*-1\r\n"
    if kind == "_":
        return b"_\r\n"
    if kind == "#":
        return rng.choice([b"#t\r\n", b"#f\r\n"])
    if kind == ",":
        return b",3.14\r\n"
    if kind == "(":
        return b"(12345678901234567890\r\n"
    if kind == "=":
        text = b"txt:" + rng.choice(TRICKY)
        return b"=%d\r\n%s\r\n" % (len(text), text)
    if kind == "!":
        return b"!%d\r\n%s\r\n" % (len(b"ERR x\r\ny"), b"ERR x\r\ny")
    count = rng.randrange(0, 5)
    items = b"".join(random_reply(rng, depth + 1) for _ in range(count * (2 if kind == "%" else 1)))
    if kind == "|":  # an attribute map, then the value it annotates
        return b"|1\r\n+key\r\n:1\r\n" + random_reply(rng, depth + 1)
    head = {"%": b"%", "*": b"*", "~": b"~", ">": b">"}[kind]
    return head + b"%d\r\n" % count + items


def scan_in_chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    scanner = ReplyScanner()
    got: list[bytes] = []
    start = 0
    for cut in [*cuts, len(data)]:
        got += scanner.feed(data[start:cut])
        start = cut
    assert scanner.buffered() == 0
    return got


@pytest.mark.parametrize("seed", range(40))
def test_random_streams_cut_anywhere(seed: int) -> None:
    rng = random.Random(seed)
    sent = [random_reply(rng) for _ in range(rng.randrange(1, 80))]
    data = b"".join(sent)
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(0, 12))))
    got = scan_in_chunks(data, cuts)
    assert got == sent


@pytest.mark.parametrize("seed", range(10))
def test_every_byte_its_own_chunk(seed: int) -> None:
    rng = random.Random(seed)
    sent = [random_reply(rng) for _ in range(5)]
    sent = [r for r in sent if len(r) < 5000]
    data = b"".join(sent)
    assert scan_in_chunks(data, list(range(1, len(data)))) == sent


def test_one_chunk_of_many_get_replies() -> None:
    """The shape a pipelined GET load produces: all taken in one feed, none left over."""
    sent = [bulk(b"x" * 64) if i % 7 else b"$-1\r\n" for i in range(500)]
    assert ReplyScanner().feed(b"".join(sent)) == sent


def test_large_chunk_of_small_replies() -> None:
    """Over the split fast path's size limit: the careful scan gives the same boundaries."""
    sent = [bulk(b"%d" % i) if i % 2 else b":%d\r\n" % i for i in range(20000)]
    data = b"".join(sent)
    assert len(data) > 1 << 16
    assert scan_in_chunks(data, [len(data) // 3]) == sent


@pytest.mark.parametrize(
    "sent",
    [
        [bulk(b"a\r\nb"), b"+OK\r\n"],  # the token after the header is shorter than the value
        [bulk(b"ab\r"), bulk(b"\nab"), bulk(b"")],  # CR or LF next to the terminating CRLF
        [b"*2\r\n$1\r\na\r\n$-1\r\n", bulk(b"x")],  # an aggregate ends the fast path
        [b"+OK\r\n", b"_\r\n", b":1\r\n"],  # RESP3 null between one-line replies
        [bulk(b"y" * 4096), bulk(b"y" * 4095)],  # past and at the header table's edge
    ],
)
def test_boundaries_the_fast_path_must_not_guess(sent: list[bytes]) -> None:
    data = b"".join(sent)
    assert ReplyScanner().feed(data) == sent
    for cut in range(1, len(data)):
        assert scan_in_chunks(data, [cut]) == sent


def test_partial_reply_waits_for_the_rest() -> None:
    scanner = ReplyScanner()
    assert scanner.feed(b"$5\r\nhel") == []
    assert scanner.feed(b"lo\r\n:1") == [bulk(b"hello")]
    assert scanner.feed(b"\r\n") == [b":1\r\n"]
    assert scanner.buffered() == 0


def test_malformed_length_is_an_error() -> None:
    with pytest.raises(ValueError):
        ReplyScanner().feed(b"$abc\r\nxyz\r\n")


@pytest.mark.parametrize("chunk", [1000, 16383, 16384, 65536])
def test_big_values_over_many_reads(chunk: int) -> None:
    """Big bulk strings collected read by read (joined once): back to back, after small replies
    in the same read, followed by small replies in their last read, one ending a read exactly."""
    sent = [
        b"+OK\r\n",
        bulk(b"a" * 100_000),
        bulk(b"b" * 20_000),
        b":7\r\n",
        bulk(b"c\r\n" * 10_000),
        b"$-1\r\n",
        bulk(b"d" * (3 * chunk - 9)),
        bulk(b"e" * 16_384),
    ]
    data = b"".join(sent)
    scanner = ReplyScanner()
    got: list[bytes] = []
    for start in range(0, len(data), chunk):
        got += scanner.feed(data[start : start + chunk])
    assert got == sent
    assert scanner.buffered() == 0


@pytest.mark.pure_only  # the compiled build copies big replies (resp._VIEWS)
def test_big_replies_inside_one_read_are_views_of_it() -> None:
    """No copy for a big reply that is a large part of a read; small ones, and big ones that are
    a small part of a read (a view would keep much more than itself alive), are bytes."""
    big = [bulk(b"a" * 20_000), bulk(b"b" * 30_000)]
    scanner = ReplyScanner()
    got = scanner.feed(b"".join([*big, b":1\r\n"]))
    assert scanner.views
    assert [type(r) for r in got] == [memoryview, memoryview, bytes]
    assert got == [*big, b":1\r\n"]
    got = scanner.feed(b"".join([bulk(b"c" * 20_000), bulk(b"d" * 100_000)]))
    assert [type(r) for r in got] == [bytes, memoryview]
    got = scanner.feed(b"+OK\r\n")
    assert not scanner.views and got == [b"+OK\r\n"]


def read_like_a_buffered_protocol(data: bytes, sizes: list[int]) -> list[bytes]:
    """Reads of up to `sizes[i]` bytes as BackendConnection.buffer_updated makes them: into
    room() while a big bulk string is under way (never past it), else into a read buffer: one
    that begins with a big bulk string goes to take_big, any other is fed as bytes."""
    scanner = ReplyScanner()
    got: list[bytes] = []
    pos = 0
    i = 0
    read = memoryview(bytearray(262_144))
    while pos < len(data):
        size = sizes[i % len(sizes)]
        i += 1
        room = scanner.room()
        if room is None:
            n = min(size, len(read), len(data) - pos)
            read[:n] = data[pos : pos + n]
            pos += n
            big, rest = scanner.take_big(read, n)
            if rest < 0:
                replies = scanner.feed(bytes(read[:n]))
            else:
                replies = [bytes(big)] if big is not None else []
                if rest < n:
                    replies += [bytes(r) for r in scanner.feed(bytes(read[rest:n]))]
        else:
            n = min(size, len(room), len(data) - pos)
            room[:n] = data[pos : pos + n]
            pos += n
            view = scanner.filled_view(n)
            replies = [bytes(view)] if view is not None else []
        # Anything not bytes (a view, a filled bytearray) must be flagged, to be converted.
        assert scanner.views or all(type(r) is bytes for r in replies)
        got += replies
    assert scanner.buffered() == 0
    return got


@pytest.mark.parametrize("seed", range(30))
def test_reads_into_room_give_the_same_replies(seed: int) -> None:
    rng = random.Random(seed)
    sent = [random_reply(rng) for _ in range(rng.randrange(1, 40))]
    sent += [bulk(bytes([97 + i]) * rng.choice([16_384, 20_000, 100_000])) for i in range(3)]
    rng.shuffle(sent)
    sizes = [rng.choice([1, 7, 1000, 16_384, 65_536, 262_144]) for _ in range(8)]
    got = read_like_a_buffered_protocol(b"".join(sent), sizes)
    assert got == sent
    big = [r for r in got if len(r) > 16_384]
    assert big, "the stream holds big replies"


@pytest.mark.pure_only  # the compiled build copies big replies (resp._VIEWS)
def test_finished_big_reply_is_flagged_when_the_read_goes_on() -> None:
    """A big bulk string finished by a read that also holds small replies: `views` stays set
    (the bytearray must be converted for owners that keep replies)."""
    value = bulk(b"v" * 50_000)
    scanner = ReplyScanner()
    assert scanner.feed(value[:30_000]) == []
    got = scanner.feed(value[30_000:] + b"+OK\r\n")
    assert got == [value, b"+OK\r\n"]
    assert type(got[0]) is bytearray and scanner.views


def _both_fast_paths(data: bytes) -> None:
    """The split fast path (pure build) and the byte scan (compiled build): the same replies
    up to where the split stopped, then what the careful scan gives from there."""
    split_out, split_pos = _split_lines(data)
    take_out, take_pos = take_replies(data, _VIEW_MIN)
    short = min(len(split_out), len(take_out))
    assert [bytes(r) for r in take_out[:short]] == [bytes(r) for r in split_out[:short]]
    for out, pos in ((split_out, split_pos), (take_out, take_pos)):
        rest, end = _scan_replies(data, pos, list(out))
        whole, whole_end = _scan_replies(data, 0, [])
        assert [bytes(r) for r in rest] == [bytes(r) for r in whole]
        assert end == whole_end


@pytest.mark.parametrize("seed", range(30))
def test_split_and_take_fast_paths_give_the_same_replies(seed: int) -> None:
    rng = random.Random(seed)
    data = b"".join(random_reply(rng) for _ in range(rng.randrange(1, 40)))
    for prefix in random_prefixes(rng, data):
        _both_fast_paths(prefix)


@pytest.mark.parametrize(
    "data",
    [
        b"$-1\r\n$-1\r",
        b"$-1\r\n$-",
        b"$0\r\n\r\n+OK\r\n",
        b"$5\r\na\r\nb\r\n:1\r\n",
        b"$16384\r\n" + b"v" * 16384 + b"\r\n$1\r\nx\r\n",
        b"$16383\r\n" + b"v" * 16383 + b"\r\n",
        b"-ERR x\r\n*1\r\n$1\r\na\r\n",
        b"+OK\r\n+O",
        b"$3\r\nab",
    ],
)
def test_reply_fast_paths_at_their_edges(data: bytes) -> None:
    _both_fast_paths(data)
