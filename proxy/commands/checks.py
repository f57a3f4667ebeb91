"""Checks made before routing: what no client command may touch.

Keys under the reserved prefix belong to the proxy alone (a migration's lease, cursors and gate):
refused in every client command that names them as keys, hidden from KEYS and SCAN. Pure.
"""

from __future__ import annotations

from typing import Final

RESERVED_PREFIX: Final = b"__shardproxy:"


def is_reserved(key: bytes) -> bool:
    """Keys the proxy keeps to itself: refused to clients, never copied, verified or cleaned."""
    return key.startswith(RESERVED_PREFIX)
