"""THE command table, pure: Redis's own metadata (proxy/commands/table.py) classified for routing.

Every command and subcommand gets one Kind (how it is routed) and, when split or fanned out, one
Merge. Kinds come from one small override table below plus Redis's flags and key specs; key
positions come from the Redis 7 key specs (keyspec.py). Also the lookups by request and the
texts of Redis's unknown-command and arity errors (from proxy/errors.py).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from proxy import errors
from proxy.commands import table as command_table
from proxy.commands.keyspec import GETKEYS, KeySpec, spec_positions
from proxy.commands.table import CommandRow


class Kind(enum.Enum):
    SINGLE = "single"  # exactly one key, at first_key: routed by that key
    MULTI = "multi"  # split per backend, merged in the client's key order
    SAME_BACKEND = "same_backend"  # several keys, allowed when all map to one backend
    FANOUT = "fanout"  # every backend, replies merged
    LOCAL = "local"  # answered by the proxy
    TRANSACTION = "transaction"  # MULTI EXEC DISCARD WATCH UNWATCH
    BLOCKING = "blocking"  # may block: needs a connection of its own while it waits
    PUBSUB = "pubsub"  # the publish/subscribe family
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
    RANDOM = "random"  # RANDOMKEY: a key from a backend, chosen at random among those that have one
    CONFIG = "config"  # CONFIG GET: every parameter once, the first backend's value
    LIBRARIES = "libraries"  # FUNCTION LIST: every library once, by name
    # FUNCTION LOAD/DELETE/RESTORE: all or nothing, by net/functions.py (never merged by a plan)
    ATOMIC = "atomic"


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
    "function|flush": Merge.OK,  # every backend's functions, like FLUSHALL its keys
    "randomkey": Merge.RANDOM,
    "config|get": Merge.CONFIG,  # read-only; secrets (requirepass ...) are never shown
    "function|list": Merge.LIBRARIES,
    "function|dump": Merge.FIRST,  # equal everywhere: LOAD/DELETE/RESTORE are all or nothing
    "function|load": Merge.ATOMIC,
    "function|delete": Merge.ATOMIC,
    "function|restore": Merge.ATOMIC,
    "config|set": Merge.ATOMIC,  # only parameters allow_config_set names
}
NEEDS_FLUSH_PERMISSION = frozenset({"flushdb", "flushall", "function|flush"})
LOCAL = frozenset(
    {
        "ping", "echo", "quit", "select", "hello", "auth", "reset", "info",
        "time",  # the proxy's clock is a server clock like any backend's
        "client|setname", "client|getname", "client|id", "client|info",
        "client|list", "client|kill",  # the proxy's own clients (commands/clients.py)
        "client|reply", "client|unblock",
        "command", "command|count", "command|docs", "command|getkeys",
        "command|getkeysandflags", "command|help", "command|info", "command|list",
        "acl|whoami",  # the client's user is the proxy's (client.users), not the backend's
    }
)  # fmt: skip
# Transactions carry no flag that marks them; blocking and pub/sub commands are caught by flag.
TRANSACTION = frozenset({"multi", "exec", "discard", "watch", "unwatch"})
# Blocking only with BLOCK: routed by their streams; the routing layer refuses BLOCK.
SAME_BACKEND = frozenset({"xread", "xreadgroup"})
# Keyed commands the default rule would route: cluster internals. (MOVE is routed by its key:
# its two databases are on the key's backend; its db argument is checked: commands/checks.py.)
# Keyless commands (WAIT, SWAPDB, FUNCTION STATS, ...) are denied by the default rule.
DENIED = frozenset({"migrate", "restore-asking"})


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
        getkeys = GETKEYS.get(self.name)
        if getkeys is not None:
            return getkeys(args)
        return spec_positions(self.key_specs, args)

    def arity_ok(self, argc: int) -> bool:
        arity = self.arity
        return argc == arity if arity >= 0 else argc >= -arity


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
    if "pubsub" in flags:
        return Kind.PUBSUB
    if "blocking" in flags:
        return Kind.BLOCKING
    keys = [spec for spec in key_specs if spec.is_key]
    if not keys:
        return Kind.DENIED
    if len(keys) == 1 and keys[0].is_one_fixed_key and "movablekeys" not in flags:
        return Kind.SINGLE
    return Kind.SAME_BACKEND


_OVERRIDES = (
    (Kind.LOCAL, LOCAL),
    (Kind.TRANSACTION, TRANSACTION),
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


EXTRA_ROWS: tuple[CommandRow, ...] = ()  # none: CLIENT SETINFO is unknown to Redis 7.0.15
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
