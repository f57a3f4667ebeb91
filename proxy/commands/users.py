"""Client ACL users, pure: Redis's ACL rules for commands and keys, compiled once per config.

`commands` uses Redis's syntax (`+@read -@dangerous +get -flushall`, `allcommands`,
`nocommands`, `+client|setname`), read against the command table's ACL categories; `keys`
takes `~*` / `allkeys`, `~prefix*` and `~exact` (no other glob), and `resetkeys`. Each user
becomes a set of allowed command names and a tuple of key prefixes, so the check per request is
a set lookup and a prefix test per key; the default user (client.password) may run everything.
A user allowed every key keeps the client's fast path (Session.direct) for the commands it may
run (`allows`, asked once per command name); the rest is checked by `refusal` in dispatch.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from proxy import errors
from proxy.commands import table as command_table
from proxy.commands.spec import CommandSpec, all_specs
from proxy.config.model import ClientConfig, UserConfig
from proxy.errors import ConfigError

DEFAULT_USER = "default"
_GLOB = frozenset("*?[]\\")
# Commands outside the generated table (spec.EXTRA_ROWS): their categories.
_EXTRA_CATEGORIES: Mapping[str, tuple[str, ...]] = {"client|setinfo": ("connection", "slow")}


@dataclass(frozen=True, slots=True)
class User:
    name: str
    password_sha256: bytes | None  # None: any password is right (Redis's `nopass`)
    all_commands: bool  # +@all: `commands` is not consulted
    commands: frozenset[str]  # spec names allowed (subcommands as 'client|setname')
    all_keys: bool  # ~*: `prefixes` and `exact` are not consulted
    prefixes: tuple[bytes, ...]  # from ~prefix*
    exact: frozenset[bytes]  # from ~key

    @property
    def everything(self) -> bool:
        """Allowed every command on every key: nothing to check per request."""
        return self.all_commands and self.all_keys

    def allows(self, command: str) -> bool:
        """May this user run the command (a spec name, 'client|setname' for a subcommand)?"""
        return self.all_commands or command in self.commands

    def password_ok(self, password: bytes) -> bool:
        """Constant time in the password's content: digests are compared, never the texts."""
        if self.password_sha256 is None:
            return True
        return hmac.compare_digest(hashlib.sha256(password).digest(), self.password_sha256)

    def refusal(self, spec: CommandSpec, args: Sequence[bytes]) -> bytes | None:
        """Redis's NOPERM for a command this user may not run, or a key it may not touch."""
        if not self.all_commands and spec.name not in self.commands:
            return errors.noperm_command(spec.name)
        if not self.all_keys:
            for position in spec.key_positions(args):
                if not self.key_ok(args[position]):
                    return errors.noperm_keys()
        return None

    def key_ok(self, key: bytes) -> bool:
        return self.all_keys or key in self.exact or key.startswith(self.prefixes)


@dataclass(frozen=True, slots=True)
class Users:
    """The users of one config: `default` and the named ones, by name."""

    default: User
    named: Mapping[bytes, User]

    def authenticate(self, name: bytes | None, password: bytes) -> User | None:
        """The user these credentials name (None: the default user), or None when wrong."""
        user = self.default if name is None else self.named.get(name)
        if user is None:
            _decoy(password)  # an unknown user costs what a wrong password does
            return None
        return user if user.password_ok(password) else None

    def get(self, name: str) -> User | None:
        return self.named.get(name.encode())


def _decoy(password: bytes) -> None:
    hmac.compare_digest(hashlib.sha256(password).digest(), bytes(32))


def _categories() -> dict[str, tuple[str, ...]]:
    known = {spec.name for spec in all_specs()}
    table = {**command_table.ACL_CATEGORIES, **_EXTRA_CATEGORIES}
    return {name: table.get(name, ()) for name in known}


_CATEGORIES = _categories()
_ALL_NAMES = frozenset(_CATEGORIES)
CATEGORY_NAMES = frozenset(c for cats in _CATEGORIES.values() for c in cats) | {"all"}
# Redis lets every user run these (flag no_auth): AUTH, HELLO, QUIT, RESET.
_ALWAYS = frozenset(s.name for s in all_specs() if "no_auth" in s.flags)


def _named(rule: str) -> frozenset[str]:
    """The commands one `+name` / `-name` rule covers: a container covers its subcommands."""
    name = rule.lower()
    if name not in _ALL_NAMES:
        raise ValueError(f"unknown command {rule!r}")
    if "|" in name:
        return frozenset({name})
    return frozenset(n for n in _ALL_NAMES if n == name or n.startswith(name + "|"))


def _covered(rule: str) -> frozenset[str]:
    if not rule.startswith("@"):
        return _named(rule)
    category = rule[1:].lower()
    if category not in CATEGORY_NAMES:
        raise ValueError(f"unknown ACL category {rule!r}")
    if category == "all":
        return _ALL_NAMES
    return frozenset(n for n, cats in _CATEGORIES.items() if category in cats)


def parse_commands(rules: Iterable[str]) -> frozenset[str]:
    """Redis's command rules, applied left to right from no command at all; ValueError."""
    allowed: set[str] = set()
    for rule in rules:
        word = rule.lower()
        if word in ("allcommands", "nocommands"):
            word = "+@all" if word == "allcommands" else "-@all"
        if word[:1] not in ("+", "-") or len(word) < 2:
            raise ValueError(f"{rule!r} is not a command rule (+name, -name, +@category, -@cat)")
        covered = _covered(word[1:])
        if word[0] == "+":
            allowed |= covered
        else:
            allowed -= covered
    return frozenset(allowed | _ALWAYS)


def parse_keys(rules: Iterable[str]) -> tuple[bool, tuple[bytes, ...], frozenset[bytes]]:
    """(every key, prefixes, exact keys) of Redis's key rules; ValueError for what is not kept."""
    every = False
    prefixes: list[bytes] = []
    exact: set[bytes] = set()
    for rule in rules:
        if rule in ("allkeys", "~*"):
            every = True
            continue
        if rule == "resetkeys":
            every, prefixes, exact = False, [], set()
            continue
        if not rule.startswith("~") or len(rule) < 2:
            raise ValueError(f"{rule!r} is not a key rule (~*, ~prefix*, ~key, allkeys)")
        pattern = rule[1:]
        head = pattern[:-1] if pattern.endswith("*") else pattern
        if any(c in _GLOB for c in head):
            raise ValueError(f"{rule!r}: only ~*, ~prefix* and ~key are supported (no other glob)")
        if pattern.endswith("*"):
            prefixes.append(head.encode())
        else:
            exact.add(pattern.encode())
    return every, tuple(prefixes), frozenset(exact)


def compile_user(config: UserConfig, path: str = "user") -> User:
    """ValueError names the rule at fault, after `path.commands: ` or `path.keys: `."""
    try:
        commands = parse_commands(config.commands)
    except ValueError as exc:
        raise ValueError(f"{path}.commands: {exc}") from None
    try:
        every, prefixes, exact = parse_keys(config.keys)
    except ValueError as exc:
        raise ValueError(f"{path}.keys: {exc}") from None
    return User(
        name=config.name,
        password_sha256=config.password_sha256,
        all_commands=commands >= _ALL_NAMES,
        commands=commands,
        all_keys=every,
        prefixes=prefixes,
        exact=exact,
    )


def default_user(password: str | None) -> User:
    digest = None if password is None else hashlib.sha256(password.encode()).digest()
    return User(DEFAULT_USER, digest, True, _ALL_NAMES, True, (), frozenset())


def compile_users(client: ClientConfig) -> Users:
    """The users of client.password and client.users; ConfigError lists every bad rule."""
    problems: list[str] = []
    named: dict[bytes, User] = {}
    for index, config in enumerate(client.users):
        try:
            named[config.name.encode()] = compile_user(config, f"client.users[{index}]")
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(problems)
    return Users(default_user(client.password), named)
