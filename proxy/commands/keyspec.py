"""Key positions, pure: where a command's keys are, from Redis 7's key specs.

KeySpec is one key spec of the command table; spec_positions finds the keys like Redis's
getKeysUsingKeySpecs, and GETKEYS holds the getkeys procs of the commands whose specs say
"unknown" (SORT). Never raises on a client's malformed arguments: a bad key count yields the
keys that are valid, and the backend that runs the command answers with Redis's own error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from proxy.commands.table import KeySpecRow

__all__ = ["GETKEYS", "KeySpec", "spec_positions"]


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One Redis 7 key spec: where the keys of a command start, and how many follow."""

    flags: frozenset[str]  # RW RO OW RM access update insert delete not_key incomplete ...
    begin_search: str  # "index" | "keyword" | "unknown"
    index: int  # index: the first key's position; keyword: where the search starts (<0: from end)
    keyword: bytes  # keyword: the (uppercase) argument the first key follows
    find_keys: str  # "range" | "keynum" | "unknown"
    lastkey: int  # range: last key relative to the first (<0: relative to the end)
    keystep: int  # range and keynum: arguments per key
    limit: int  # range with lastkey -1: only 1/limit of the remaining arguments are keys
    keynumidx: int  # keynum: where the key count is, relative to begin_search's result
    firstkey: int  # keynum: where the first key is, relative to begin_search's result
    is_key: bool  # False for "not_key" specs (SPUBLISH's shard channel): skipped like Redis

    @classmethod
    def from_row(cls, row: KeySpecRow) -> KeySpec:
        flags, bs_type, bs_index, keyword, fk_type, a, b, c = row
        is_range = fk_type == "range"
        return cls(
            flags=frozenset(flags),
            begin_search=bs_type,
            index=bs_index,
            keyword=keyword.upper().encode(),
            find_keys=fk_type,
            lastkey=a if is_range else 0,
            keystep=max(1, b if is_range else c),
            limit=c if is_range else 0,
            keynumidx=0 if is_range else a,
            firstkey=0 if is_range else b,
            is_key="not_key" not in flags,
        )

    @property
    def is_one_fixed_key(self) -> bool:
        """Always exactly one key, at a fixed position."""
        return (
            self.begin_search == "index"
            and self.find_keys == "range"
            and self.lastkey == 0
            and "incomplete" not in self.flags
        )


def _parse_count(raw: bytes) -> int | None:
    """A key count as Redis's string2ll reads it, or None for anything else (or negative)."""
    if not raw.isdigit() or len(raw) > 19 or (raw[:1] == b"0" and raw != b"0"):
        return None
    count = int(raw)
    return count if count < 1 << 63 else None


def _begin_search(spec: KeySpec, args: Sequence[bytes]) -> int:
    """Position of the spec's first key, 0 if the spec yields none."""
    if spec.begin_search == "index":
        return spec.index
    if spec.begin_search != "keyword":
        return 0
    argc = len(args)
    start = spec.index
    # Like Redis: forwards from startfrom, or backwards from argc + startfrom down to 2.
    search = range(start, argc - 1) if start > 0 else range(argc + start, 1, -1)
    for i in search:
        if 0 < i < argc and args[i].upper() == spec.keyword:
            return i + 1
    return 0


def _find_keys(spec: KeySpec, args: Sequence[bytes], first: int) -> range:
    argc = len(args)
    if spec.find_keys == "range":
        if spec.lastkey >= 0:
            last = first + spec.lastkey
        elif not spec.limit:
            last = argc + spec.lastkey
        else:
            last = first + (argc - first) // spec.limit + spec.lastkey
    elif spec.find_keys == "keynum":
        at = first + spec.keynumidx
        count = _parse_count(args[at]) if at < argc else None
        if not count:
            return range(0)
        first += spec.firstkey
        last = first + count - 1
    else:
        return range(0)
    return range(first, min(last, argc - 1) + 1, spec.keystep)


def spec_positions(specs: Iterable[KeySpec], args: Sequence[bytes]) -> list[int]:
    positions: list[int] = []
    for spec in specs:
        if spec.is_key:
            first = _begin_search(spec, args)
            if first:
                positions.extend(_find_keys(spec, args, first))
    return positions


def _sort_positions(args: Sequence[bytes]) -> list[int]:
    """SORT key [BY p] [LIMIT o c] [GET p ...] [STORE dest]: like Redis's sortGetKeys.

    BY and GET patterns name keys derived from the data; like Redis, they are not keys here.
    """
    argc = len(args)
    store = 0
    i = 2
    while i < argc:
        word = args[i].lower()
        if word == b"limit":
            i += 2
        elif word in (b"get", b"by"):
            i += 1
        elif word == b"store" and i + 1 < argc:
            store = i + 1  # the last STORE wins, as in SORT itself
        i += 1
    positions = [1] if argc > 1 else []
    return [*positions, store] if store else positions


def _sort_ro_positions(args: Sequence[bytes]) -> list[int]:
    return [1] if len(args) > 1 else []


# Commands whose key specs are "unknown" (they cannot describe them): Redis's getkeys procs.
GETKEYS: dict[str, Callable[[Sequence[bytes]], list[int]]] = {
    "sort": _sort_positions,
    "sort_ro": _sort_ro_positions,
}
