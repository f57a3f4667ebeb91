"""THE command table, pure: Redis's own metadata (proxy/command_table.py) classified for routing.

Every command and subcommand gets one Kind (how it is routed) and, when split or fanned out, one
Merge. Kinds come from one small override table below plus Redis's flags and key specs; key
positions come from the Redis 7 key specs, like Redis's getKeysUsingKeySpecs. Nothing here
raises on a client's malformed arguments: a bad key count yields the keys that are valid, and
the backend that runs the command answers with Redis's own error.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from proxy import errors
from proxy.commands import table as command_table
from proxy.commands.table import CommandRow, KeySpecRow


class Kind(enum.Enum):
    SINGLE = "single"  # exactly one key, at first_key: routed by that key
    MULTI = "multi"  # split per backend, merged in the client's key order
    SAME_BACKEND = "same_backend"  # several keys, allowed when all map to one backend
    FANOUT = "fanout"  # every backend, replies merged
    LOCAL = "local"  # answered by the proxy
    PINNED = "pinned"  # needs a dedicated backend connection: not supported yet
    DENIED = "denied"  # refused by the proxy


class Merge(enum.Enum):
    VALUES = "values"  # MGET: the values, in the client's key order
    OK = "ok"  # MSET, FLUSHDB, FLUSHALL, SCRIPT FLUSH: +OK when every backend said so
    SUM = "sum"  # DEL UNLINK EXISTS TOUCH DBSIZE: the sum of the integers
    CONCAT = "concat"  # KEYS: every backend's array, concatenated
    SCAN = "scan"  # SCAN: one backend at a time, the cursor encodes which
    FIRST = "first"  # SCRIPT LOAD: every backend answers the same, keep the first
    ALL = "all"  # SCRIPT EXISTS: per position, 1 only if every backend has it
    KILL = "kill"  # SCRIPT KILL, FUNCTION KILL: +OK if any backend stopped one, else its error


_SINGLE = Kind.SINGLE  # Enum attribute access is slow on 3.11 (benchmarks/README.md); per request

# The override table: the only hand-made decisions. Everything else follows from Redis's flags
# and key specs in classify() below; tests check every name here exists in the table.
MULTI_MERGES: Mapping[str, Merge] = {
    "mget": Merge.VALUES,
    "mset": Merge.OK,
    "del": Merge.SUM,
    "unlink": Merge.SUM,
    "exists": Merge.SUM,
    "touch": Merge.SUM,
}
FANOUT_MERGES: Mapping[str, Merge] = {
    "dbsize": Merge.SUM,
    "keys": Merge.CONCAT,
    "scan": Merge.SCAN,
    "script|load": Merge.FIRST,  # same sha on every backend, so EVALSHA works on any of them
    "script|exists": Merge.ALL,
    "script|flush": Merge.OK,
    # Each on a connection of its own (Backend.send_alone), not behind the script it stops.
    "script|kill": Merge.KILL,
    "function|kill": Merge.KILL,
    "flushdb": Merge.OK,
    "flushall": Merge.OK,
}
NEEDS_FLUSH_PERMISSION = frozenset({"flushdb", "flushall"})
LOCAL = frozenset(
    {
        "ping", "echo", "quit", "select", "hello", "auth", "reset", "info",
        "time",  # the proxy's clock is a server clock like any backend's
        "client|setname", "client|getname", "client|id", "client|info", "client|setinfo",
        "command", "command|count", "command|docs", "command|getkeys",
        "command|getkeysandflags", "command|help", "command|info", "command|list",
    }
)  # fmt: skip
# Transactions carry no flag that marks them; blocking and pub/sub commands are caught by flag.
PINNED = frozenset({"multi", "exec", "discard", "watch", "unwatch"})
# Blocking only with BLOCK: routed by their streams; the routing layer refuses BLOCK.
SAME_BACKEND = frozenset({"xread", "xreadgroup"})
# Keyed commands the default rule would route: other databases and cluster internals.
# Keyless commands (FUNCTION *, WAIT, SWAPDB, RANDOMKEY, ...) are denied by the default rule.
DENIED = frozenset({"move", "migrate", "restore-asking"})


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


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str  # canonical lowercase Redis name: "get", "client|setname"
    arity: int  # Redis arity, counting the command (and subcommand); negative = at least
    flags: frozenset[str]  # Redis command flags: write readonly admin blocking pubsub ...
    kind: Kind
    merge: Merge | None  # MULTI and FANOUT only
    write: bool  # the "write" flag
    first_key: int  # legacy first key index (0 if none); SINGLE: the key's index
    key_step: int  # legacy key step: arguments per key (MSET: 2); 0 if none
    needs_flush_permission: bool  # FLUSHDB FLUSHALL: only when the config allows
    label: str  # metric label: the lowercase name
    key_specs: tuple[KeySpec, ...] = ()  # in Redis's order, which is the order of the keys
    group: str = ""  # COMMAND DOCS group: "string", "server", ...
    summary: str = ""  # COMMAND DOCS summary

    def key_positions(self, args: Sequence[bytes]) -> list[int]:
        """Indices into `args` (args[0] is the command) of every key, in Redis's order.

        Never raises: a key count that is not a non-negative integer yields no keys from its
        spec, one larger than the arguments is clipped; the backend then answers Redis's error.
        """
        if self.kind is _SINGLE:
            pos = self.first_key
            return [pos] if len(args) > pos else []
        getkeys = _GETKEYS.get(self.name)
        if getkeys is not None:
            return getkeys(args)
        return _spec_positions(self.key_specs, args)

    def arity_ok(self, argc: int) -> bool:
        arity = self.arity
        return argc == arity if arity >= 0 else argc >= -arity


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


def _spec_positions(specs: Iterable[KeySpec], args: Sequence[bytes]) -> list[int]:
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
_GETKEYS: dict[str, Callable[[Sequence[bytes]], list[int]]] = {
    "sort": _sort_positions,
    "sort_ro": _sort_ro_positions,
}


def classify(name: str, flags: frozenset[str], key_specs: Sequence[KeySpec]) -> Kind:
    """The override table first, then Redis's flags, then the shape of the key specs."""
    if name in MULTI_MERGES:
        return Kind.MULTI
    if name in FANOUT_MERGES:
        return Kind.FANOUT
    for kind, names in _OVERRIDES:
        if name in names:
            return kind
    if "admin" in flags:
        return Kind.DENIED
    if "pubsub" in flags or "blocking" in flags:
        return Kind.PINNED
    keys = [spec for spec in key_specs if spec.is_key]
    if not keys:
        return Kind.DENIED
    if len(keys) == 1 and keys[0].is_one_fixed_key and "movablekeys" not in flags:
        return Kind.SINGLE
    return Kind.SAME_BACKEND


_OVERRIDES = (
    (Kind.LOCAL, LOCAL),
    (Kind.PINNED, PINNED),
    (Kind.SAME_BACKEND, SAME_BACKEND),
    (Kind.DENIED, DENIED),
)


def _key_index(key_specs: Iterable[KeySpec]) -> int:
    return next(spec.index for spec in key_specs if spec.is_key)


def build_spec(row: CommandRow) -> CommandSpec:
    name, arity, flag_names, first, _last, step, spec_rows, group, summary = row
    flags = frozenset(flag_names)
    key_specs = tuple(KeySpec.from_row(r) for r in spec_rows)
    kind = classify(name, flags, key_specs)
    if kind is Kind.SINGLE and (first != _key_index(key_specs) or first >= abs(arity)):
        raise ValueError(f"{name}: a single-key command must have its key at first_key")
    return CommandSpec(
        name=name,
        arity=arity,
        flags=flags,
        kind=kind,
        merge=MULTI_MERGES.get(name) or FANOUT_MERGES.get(name),
        write="write" in flags,
        first_key=first,
        key_step=step,
        needs_flush_permission=name in NEEDS_FLUSH_PERMISSION,
        label=name,
        key_specs=key_specs,
        group=group,
        summary=summary,
    )


def build_specs(rows: Iterable[CommandRow]) -> list[CommandSpec]:
    """Every command and subcommand of `rows`, classified (the generator renders docs with it)."""
    return [build_spec(row) for row in rows]


# Commands newer than the generated table that clients send on every connect: redis-py 8 sends
# CLIENT SETINFO (Redis 7.2) and twemproxy's habit of closing such connections is what we avoid.
EXTRA_ROWS: tuple[CommandRow, ...] = (
    (
        "client|setinfo", 4, ("loading", "noscript", "stale"), 0, 0, 0, (), "connection",
        "Set client or connection specific info (answered by the proxy)",
    ),
)  # fmt: skip
_ALL: list[CommandSpec] = sorted(
    build_specs((*command_table.COMMANDS, *EXTRA_ROWS)), key=lambda s: s.name
)

# Top-level commands (containers included) by uppercase name.
COMMANDS: Mapping[bytes, CommandSpec] = {
    s.name.upper().encode(): s for s in _ALL if "|" not in s.name
}
# Subcommands by uppercase container name, then uppercase subcommand name.
_SUBCOMMANDS: dict[bytes, dict[bytes, CommandSpec]] = {}
for _spec in _ALL:
    _container, _bar, _sub = _spec.name.upper().partition("|")
    if _bar:
        _SUBCOMMANDS.setdefault(_container.encode(), {})[_sub.encode()] = _spec
# The per-request fast path: plain (not container) commands, as typed in upper or lower case.
PLAIN: Mapping[bytes, CommandSpec]
_PLAIN: dict[bytes, CommandSpec] = {
    key: s
    for name, s in COMMANDS.items()
    if name not in _SUBCOMMANDS
    for key in (name, name.lower())
}


PLAIN = _PLAIN


def lookup(args: Sequence[bytes]) -> CommandSpec | None:
    """The spec of a request (any case); for containers, its subcommand's. None when unknown.

    A container alone (`CLIENT`) gives the container's spec, whose arity then fails (`COMMAND`
    alone is valid). A known container with an unknown subcommand gives None too.
    """
    if not args:
        return None
    spec = _PLAIN.get(args[0])
    if spec is not None:
        return spec
    name = args[0].upper()
    spec = _PLAIN.get(name)
    if spec is not None:
        return spec
    subcommands = _SUBCOMMANDS.get(name)
    if subcommands is None:
        return None
    if len(args) < 2:
        return COMMANDS[name]
    return subcommands.get(args[1].upper())


def all_specs() -> list[CommandSpec]:
    """Every command and subcommand, sorted by name."""
    return list(_ALL)


def _c_string(arg: bytes, limit: int) -> bytes:
    """What C's "%.*s" prints of a Redis argument: up to a NUL, at most `limit` bytes."""
    return arg.split(b"\0", 1)[0][:limit]


def unknown_error(args: Sequence[bytes]) -> bytes:
    """Redis 7's exact reply to a command (or a container's subcommand) it does not know."""
    name = args[0] if args else b""
    if len(args) > 1 and name.upper() in _SUBCOMMANDS:
        sub = _c_string(args[1], 128)
        return errors.unknown_subcommand(sub, name.upper())
    shown = b""
    for arg in args[1:]:
        if len(shown) >= 128:
            break
        shown += b"'%s' " % _c_string(arg, 128 - len(shown))
    return errors.unknown_command(_c_string(name, 128), shown)


def arity_error(spec: CommandSpec) -> bytes:
    """Redis 7's exact reply to a wrong number of arguments ('client|setname' for subcommands)."""
    return errors.wrong_arity(spec.name)
