"""The backend user's ACL rules, pure: built from the command table and the config.

Scripts (EVAL, FCALL) run commands inside Redis, where the proxy's deny list never sees them, so
the backends must refuse them themselves. The rules allow everything (`+@all`) but @admin and
@dangerous, give back the few of those the proxy forwards or sends itself (RESTORE, KEYS, INFO,
SORT...), and deny every other command the proxy refuses clients (MIGRATE, SWAPDB, FLUSH*
unless `allow_flush`...). The same sets give the probes of the startup and reload check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from proxy.commands import table as command_table
from proxy.commands.spec import Kind, all_specs

CATEGORIES = command_table.ACL_CATEGORIES
DENIED_CATEGORIES = ("admin", "dangerous")
FLUSH = frozenset({"flushall", "flushdb", "function|flush"})
# Sent by the proxy and its jobs on their own (handshake, health, INFO keyspace, COMMAND, the
# backfill, big-key copy, verifier, cleanup, lease scripts, the ACL check's own EVAL).
PROXY_SENDS = frozenset(
    {
        "hello", "auth", "client|setname", "ping", "info", "dbsize", "keys", "scan",
        "command", "command|count", "command|docs", "command|getkeys",
        "command|getkeysandflags", "command|info", "command|list",
        "eval", "evalsha", "script|load", "script|exists", "script|flush",
        "get", "set", "del", "unlink", "exists", "type", "pttl", "pexpire", "persist",
        "dump", "restore", "copy", "rename", "memory|usage", "getrange", "append",
        "lrange", "rpush", "hscan", "hset", "sscan", "sadd", "zscan", "zadd",
        "hgetall", "smembers", "zrange", "xrange",
    }
)  # fmt: skip
# Kept: SELECT (the handshake of a database's backend connections), SCRIPT KILL and FUNCTION
# KILL (to be forwarded; they stop a runaway script and are no escape).
KEPT = frozenset({"select", "script|kill", "function|kill"})
# Always named in the rules, even where a category already denies them: the escapes reported.
NAMED_DENIALS = ("migrate", "swapdb")
# Forwarded for clients but never needed by the proxy itself: a backend user without them is not
# a fault the check reports (the client then gets the backend's NOPERM).
OPTIONAL = frozenset(
    {"config|get", "config|set", "function|load", "function|delete", "function|restore",
     "function|dump", "function|list"}
)  # fmt: skip
# The check's probes that must be refused (besides FLUSH* without allow_flush).
MUST_DENY = (
    "migrate", "swapdb", "config|set", "debug", "shutdown",
    "replicaof", "module|load", "acl|setuser", "bgsave",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class AclRules:
    """The rules of the proxy's backend user, in ACL SETUSER order."""

    allowed: tuple[str, ...]  # given back after -@admin -@dangerous: the proxy needs them
    denied: tuple[str, ...]  # denied on top of the categories (containers: every subcommand)

    def rules(self) -> tuple[str, ...]:
        head = ("on", "~*", "&*", "+@all", *(f"-@{c}" for c in DENIED_CATEGORIES))
        return (*head, *(f"+{c}" for c in self.allowed), *(f"-{c}" for c in self.denied))

    def line(self) -> str:
        return " ".join(self.rules())

    def setuser(self, user: str, password: str = "PASSWORD") -> str:
        """A complete ACL SETUSER command; `reset` first, so old rules of the user are dropped."""
        rules = self.rules()
        return " ".join(("ACL", "SETUSER", user, "reset", rules[0], f">{password}", *rules[1:]))


def _leaves() -> set[str]:
    """Every command Redis knows that is not a container (ACL rules name the leaves)."""
    containers = {name.split("|")[0] for name in CATEGORIES if "|" in name}
    return {name for name in CATEGORIES if name not in containers}


def _is_denied_by_category(name: str) -> bool:
    return any(c in DENIED_CATEGORIES for c in CATEGORIES.get(name, ()))


def proxy_needs(allow_flush: bool, config_set: bool = False) -> frozenset[str]:
    """Every command the proxy forwards or sends itself, under this config (`config_set`:
    allow_config_set names parameters)."""
    forwarded = {s.name for s in all_specs() if s.kind not in (Kind.DENIED, Kind.LOCAL)}
    if not allow_flush:
        forwarded -= FLUSH
    if not config_set:
        forwarded.discard("config|set")
    return frozenset((forwarded | PROXY_SENDS | KEPT) & _leaves())


def proxy_refuses(allow_flush: bool, config_set: bool = False) -> frozenset[str]:
    """Every command the backend user must be refused, under this config."""
    denied = {s.name for s in all_specs() if s.kind is Kind.DENIED}
    denied |= {name for name in _leaves() if _is_denied_by_category(name)}
    if not allow_flush:
        denied |= FLUSH
    return frozenset((denied & _leaves()) - proxy_needs(allow_flush, config_set))


def _containers_refused(refused: frozenset[str]) -> set[str]:
    """Containers every subcommand of which is refused: one `-container` names them all."""
    subs: dict[str, set[str]] = {}
    for name in _leaves():
        container, bar, _ = name.partition("|")
        if bar:
            subs.setdefault(container, set()).add(name)
    return {c for c, names in subs.items() if names <= refused}


def build_rules(allow_flush: bool, config_set: bool = False) -> AclRules:
    """The backend user's rules for a proxy with this `allow_flush`.

    Denials a category already makes are not repeated, except NAMED_DENIALS and FLUSH*; nor
    are HELP subcommands (harmless, and a third of the line)."""
    refused = proxy_refuses(allow_flush, config_set)
    needs = proxy_needs(allow_flush, config_set)
    allowed = sorted(n for n in needs if _is_denied_by_category(n))
    whole = _containers_refused(refused)
    named = set(NAMED_DENIALS) | (set() if allow_flush else FLUSH)
    denied = {c for c in whole if not all(map(_is_denied_by_category, _subs(c)))} | named
    for name in refused - named:
        container, _bar, sub = name.partition("|")
        if _is_denied_by_category(name) or container in whole or sub == "help":
            continue
        denied.add(name)
    return AclRules(allowed=tuple(allowed), denied=tuple(sorted(denied)))


def _subs(container: str) -> set[str]:
    return {n for n in _leaves() if n.startswith(container + "|")}


def probe_args(name: str) -> tuple[str, ...]:
    """A request for command `name` with a valid argument count (ACL DRYRUN checks arity)."""
    spec = next(s for s in all_specs() if s.name == name)
    parts = tuple(name.split("|"))
    return parts + ("0",) * max(0, abs(spec.arity) - len(parts))


@dataclass(frozen=True, slots=True)
class AclProbes:
    """What the check asks a backend about its user: each must be refused, or allowed."""

    must_deny: tuple[str, ...]
    must_allow: tuple[str, ...]

    def all(self) -> tuple[str, ...]:
        return (*self.must_deny, *self.must_allow)


def build_probes(allow_flush: bool, config_set: bool = False) -> AclProbes:
    deny = [*MUST_DENY, *([] if allow_flush else sorted(FLUSH))]
    if config_set:
        deny.remove("config|set")
    needs = proxy_needs(allow_flush, config_set)
    allow = sorted(needs - {"auth", "hello"} - OPTIONAL)  # auth, hello: always allowed
    return AclProbes(must_deny=tuple(deny), must_allow=tuple(allow))


@dataclass(frozen=True, slots=True)
class AclVerdict:
    """A backend user's permissions against the probes."""

    too_broad: tuple[str, ...]  # must be refused, but allowed
    too_narrow: tuple[str, ...]  # the proxy needs them, but refused

    @property
    def ok(self) -> bool:
        return not self.too_broad and not self.too_narrow

    def describe(self) -> str:
        parts = []
        if self.too_broad:
            parts.append("allows " + ", ".join(_shown(n) for n in self.too_broad))
        if self.too_narrow:
            parts.append("refuses what the proxy needs: " + ", ".join(map(_shown, self.too_narrow)))
        return "; ".join(parts) or "restricted as recommended"


def _shown(name: str) -> str:
    return name.replace("|", " ").upper()


def judge(probes: AclProbes, allowed: Sequence[bool]) -> AclVerdict:
    """The verdict from one allowed/refused answer per probe, in `probes.all()` order."""
    answers = dict(zip(probes.all(), allowed, strict=True))
    return AclVerdict(
        too_broad=tuple(n for n in probes.must_deny if answers[n]),
        too_narrow=tuple(n for n in probes.must_allow if not answers[n]),
    )
