"""Checks made before routing: what a client command may not do, whatever backend it meets.

Keys under the reserved prefix belong to the proxy alone (a migration's lease, cursors and gate):
refused in every client command that names them as keys (and hidden from KEYS and SCAN, by
routing/merge.py). Some same-backend forms cannot be proxied as sent: COPY ... DB,
SORT with BY/GET patterns. Pure.
"""

from __future__ import annotations

from typing import Final

from proxy import errors
from proxy.commands.spec import CommandSpec, Kind

RESERVED_PREFIX: Final = b"__shardproxy:"


def is_reserved(key: bytes) -> bool:
    """Keys the proxy keeps to itself: refused to clients, never copied, verified or cleaned."""
    return key.startswith(RESERVED_PREFIX)


_KEYED = frozenset({Kind.SINGLE, Kind.MULTI, Kind.SAME_BACKEND, Kind.BLOCKING})


def refusal_before_routing(spec: CommandSpec, args: list[bytes]) -> bytes | None:
    """The error to answer instead of routing a keyed request, or None.

    Keys under RESERVED_PREFIX are the proxy's own (the migration gate, lease, cursors): a
    command naming one as a key, wherever the command table says its keys are, is refused.
    Then the same-backend commands that cannot be proxied as sent (same_backend_refusal)."""
    kind = spec.kind
    if kind not in _KEYED:
        return None
    for position in spec.key_positions(args):
        if args[position].startswith(RESERVED_PREFIX):
            return errors.reserved_key(spec.name)
    return same_backend_refusal(spec, args) if kind is Kind.SAME_BACKEND else None


def same_backend_refusal(spec: CommandSpec, args: list[bytes]) -> bytes | None:
    """Why a same-backend command cannot be proxied as sent (the error to answer), or None: see
    _cross_database_option. (XREAD BLOCK is sent as a blocking command: has_block_option.)"""
    return _cross_database_option(spec, args)


def _cross_database_option(spec: CommandSpec, args: list[bytes]) -> bytes | None:
    """COPY ... DB n reaches another database; SORT BY/GET patterns read keys that may live on
    other backends (Redis Cluster refuses them too)."""
    name = spec.name
    if name == "copy":
        if any(a.upper() == b"DB" for a in args[3:]):
            return errors.select_db()
    elif name in ("sort", "sort_ro"):
        upper = [a.upper() for a in args[2:]]
        for i, word in enumerate(upper[:-1]):
            pattern = args[i + 3]
            if (word == b"BY" and pattern.upper() != b"NOSORT" and b"*" in pattern) or (
                word == b"GET" and pattern != b"#"
            ):
                return errors.sort_pattern()
    return None


def has_block_option(spec: CommandSpec, args: list[bytes]) -> bool:
    """XREAD and XREADGROUP with BLOCK: they wait on a connection of their own (net/blocking)."""
    if spec.name not in ("xread", "xreadgroup"):
        return False
    return any(a.upper() == b"BLOCK" for a in args[1:])
