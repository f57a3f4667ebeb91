"""TTL jitter, the avalanche defence: relative TTLs set on matching keys get up to `percent`
extra, uniformly at random, so keys written together do not expire together.

Only relative TTLs are touched: SET EX/PX, SETEX, PSETEX, GETEX EX/PX, EXPIRE, PEXPIRE. Never
EXPIREAT, PEXPIREAT, SET EXAT/PXAT/KEEPTTL, nor EXPIRE with GT or LT (the comparison is the
caller's). A TTL is never shortened: it is rewritten in milliseconds (SET EX -> PX, SETEX ->
PSETEX, EXPIRE -> PEXPIRE, same replies) as ttl + floor(ttl * percent/100 * u), u in [0, 1).
A TTL that is not a positive integer is left for Redis to refuse. Pure: `u` is an argument.
"""

from __future__ import annotations

JITTERED = frozenset({"set", "setex", "psetex", "getex", "expire", "pexpire"})
MAX_TTL_MS = 1 << 46  # beyond this (2,000+ years), leave the TTL alone: no overflow risk


def _ttl(text: bytes) -> int | None:
    if not text.isdigit() or len(text) > 15:
        return None
    value = int(text)
    return value if value > 0 else None


def extend_ms(ttl_ms: int, percent: float, u: float) -> int:
    """The jittered TTL: never shorter, at most `percent` longer."""
    return ttl_ms + int(ttl_ms * percent / 100.0 * u)


def jitter_args(name: str, args: list[bytes], percent: float, u: float) -> list[bytes] | None:
    """The request with its TTL jittered, or None when it carries no relative TTL to jitter."""
    if name in ("setex", "psetex"):
        return _at(args, 2, name == "setex", b"PSETEX", 0, percent, u)
    if name in ("expire", "pexpire"):
        options = {a.upper() for a in args[3:]}
        if options & {b"GT", b"LT"}:
            return None
        return _at(args, 2, name == "expire", b"PEXPIRE", 0, percent, u)
    if name in ("set", "getex"):
        start = 3 if name == "set" else 2
        for i in range(start, len(args) - 1):
            option = args[i].upper()
            if option in (b"EX", b"PX"):
                return _at(args, i + 1, option == b"EX", b"PX", i, percent, u)
    return None


def _at(
    args: list[bytes], pos: int, seconds: bool, ms_word: bytes, word_pos: int, pct: float, u: float
) -> list[bytes] | None:
    """Rewrite args[pos] (a TTL, in seconds if `seconds`) in milliseconds, args[word_pos] (the
    command or the EX/PX option) becoming `ms_word`."""
    if pos >= len(args):
        return None
    ttl = _ttl(args[pos])
    if ttl is None:
        return None
    ttl_ms = ttl * 1000 if seconds else ttl
    if ttl_ms > MAX_TTL_MS:
        return None
    out = list(args)
    out[word_pos] = ms_word
    out[pos] = b"%d" % extend_ms(ttl_ms, pct, u)
    return out
