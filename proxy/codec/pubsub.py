"""Pub/sub frames, pure: the head of a backend's pub/sub frame, the proxy's own confirmations,
and the merge of PUBSUB introspection replies from every backend.

A subscriber connection's frames are arrays (RESP2) or pushes (RESP3) whose first element names
their kind (`message`, `subscribe`...) and whose second names the channel or pattern.
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.codec.resp import decode_reply, encode_bulk, encode_int, encode_value, is_error

CONFIRMATIONS = frozenset(
    {b"subscribe", b"psubscribe", b"ssubscribe", b"unsubscribe", b"punsubscribe", b"sunsubscribe"}
)


def frame_head(raw: bytes) -> tuple[bytes, bytes]:
    """(kind, channel or pattern) of a pub/sub frame; (b"", b"") for anything else."""
    if raw[:1] not in (b"*", b">"):
        return b"", b""
    pos = raw.find(b"\r\n") + 2
    out: list[bytes] = []
    for _ in range(2):
        if raw[pos : pos + 1] != b"$":
            return b"", b""
        eol = raw.find(b"\r\n", pos)
        size = int(raw[pos + 1 : eol])
        out.append(bytes(raw[eol + 2 : eol + 2 + size]))
        pos = eol + 4 + size
    return out[0], out[1]


def as_proto(raw: bytes, proto: int) -> bytes:
    """A message frame in the client's protocol: RESP2 array or RESP3 push (same elements)."""
    marker = b">" if proto == 3 else b"*"
    return raw if raw[:1] == marker else marker + bytes(raw[1:])


def confirmation(kind: bytes, name: bytes | None, count: int, proto: int) -> bytes:
    """One (un)subscribe confirmation as Redis sends it: `kind name count`."""
    head = b">3\r\n" if proto == 3 else b"*3\r\n"
    return head + encode_bulk(kind) + encode_bulk(name, proto == 3) + encode_int(count)


def pong(args: Sequence[bytes]) -> bytes:
    """PING in RESP2 subscribed mode: `pong` and the argument (empty when none)."""
    return b"*2\r\n" + encode_bulk(b"pong") + encode_bulk(args[1] if len(args) > 1 else b"")


def merge_introspection(sub: str, replies: Sequence[bytes], resp3: bool) -> bytes:
    """PUBSUB CHANNELS/SHARDCHANNELS: the union (first seen order); NUMSUB/SHARDNUMSUB: counts
    summed per channel (a channel's subscribers are all on its owner, outside a migration);
    NUMPAT: the largest count of one backend, as every pattern subscription of the proxy is
    registered on every backend of the pool (README: Pub/sub)."""
    for raw in replies:
        if is_error(raw):
            return raw
    values = [decode_reply(raw) for raw in replies]
    if sub == "numpat":
        return encode_int(max((v for v in values if isinstance(v, int)), default=0))
    if sub in ("channels", "shardchannels"):
        seen: dict[bytes, None] = {}
        for value in values:
            if isinstance(value, list):
                seen.update(dict.fromkeys(v for v in value if isinstance(v, bytes)))
        return encode_value(list(seen), resp3)
    counts: dict[bytes, int] = {}
    for value in values:
        flat = _flat_pairs(value)
        for name, count in zip(flat[::2], flat[1::2], strict=True):
            if isinstance(name, bytes) and isinstance(count, int):
                counts[name] = counts.get(name, 0) + count
    if resp3:
        return encode_value(counts, True)
    return encode_value([x for pair in counts.items() for x in pair])


def _flat_pairs(value: object) -> list[object]:
    if isinstance(value, dict):
        return [x for pair in value.items() for x in pair]
    return list(value) if isinstance(value, list) else []
