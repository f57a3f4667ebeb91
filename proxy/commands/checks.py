"""Checks made before routing: what a client command may not do, whatever backend it meets.

Keys under the reserved prefix belong to the proxy alone (a migration's lease, cursors and gate):
refused in every client command that names them as keys (and hidden from KEYS and SCAN, by
routing/merge.py). Some same-backend forms cannot be proxied as sent: COPY ... DB,
SORT with BY/GET patterns. Pure.
"""

from __future__ import annotations

from typing import Final

from proxy import errors
from proxy.codec.request import strict_int
from proxy.commands.spec import CommandSpec, Kind

RESERVED_PREFIX: Final = b"__shardproxy:"
INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1  # a C int's range
LLONG_MIN, LLONG_MAX = -(1 << 63), (1 << 63) - 1  # a C long long's range
# Commands with a database argument, by its index: checked against the config's `databases`.
DB_ARGUMENT: Final = {"move": 2}


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
            return errors.copy_db()
    elif name in ("sort", "sort_ro"):
        upper = [a.upper() for a in args[2:]]
        for i, word in enumerate(upper[:-1]):
            pattern = args[i + 3]
            if (word == b"BY" and pattern.upper() != b"NOSORT" and b"*" in pattern) or (
                word == b"GET" and pattern != b"#"
            ):
                return errors.sort_pattern()
    return None


def db_index(text: bytes, databases: int) -> int | bytes:
    """A SELECT or MOVE database argument: its index, or Redis's error for it."""
    db = strict_int(text)
    if db is None or not LLONG_MIN <= db <= LLONG_MAX:  # Redis reads a long long,
        return errors.not_integer()
    if not INT_MIN <= db <= INT_MAX:  # then checks it fits a C int
        return errors.not_int_range(INT_MIN, INT_MAX)
    return db if 0 <= db < databases else errors.select_db()


def db_argument_refusal(spec: CommandSpec, args: list[bytes], databases: int) -> bytes | None:
    """MOVE key db: Redis's error for a db argument out of 0..databases-1, or None. (Its two
    databases are on the key's backend, where its routing sends it.)"""
    index = DB_ARGUMENT.get(spec.name)
    if index is None or index >= len(args):
        return None
    db = db_index(args[index], databases)
    return db if isinstance(db, bytes) else None


def has_block_option(spec: CommandSpec, args: list[bytes]) -> bool:
    """XREAD and XREADGROUP with BLOCK: they wait on a connection of their own (net/blocking)."""
    if spec.name not in ("xread", "xreadgroup"):
        return False
    return any(a.upper() == b"BLOCK" for a in args[1:])
