"""proxy/commands/users.py: Redis's ACL rules for commands and keys, and the per-request check."""

from __future__ import annotations

import hashlib
import re

import pytest

from proxy.commands.spec import all_specs, lookup
from proxy.commands.users import (
    CATEGORY_NAMES,
    compile_user,
    compile_users,
    default_user,
    parse_commands,
    parse_keys,
)
from proxy.config.model import ClientConfig, UserConfig
from proxy.errors import ConfigError

EVERY = frozenset(s.name for s in all_specs())
ALWAYS = {"auth", "hello", "quit", "reset"}  # Redis's no_auth commands: every user runs them


def user(commands: str, keys: str = "~*", password: bytes = b"pw") -> UserConfig:
    digest = hashlib.sha256(password).digest()
    return UserConfig("app", digest, tuple(commands.split()), tuple(keys.split()))


def refusal(commands: str, keys: str, *args: bytes) -> bytes | None:
    spec = lookup(list(args))
    assert spec is not None
    return compile_user(user(commands, keys)).refusal(spec, list(args))


def test_no_rule_allows_only_the_no_auth_commands() -> None:
    assert parse_commands([]) == ALWAYS


def test_all_and_categories() -> None:
    assert parse_commands(["+@all"]) == EVERY
    assert parse_commands(["allcommands"]) == EVERY
    assert parse_commands(["+@all", "nocommands"]) == ALWAYS
    read = parse_commands(["+@read"])
    assert {"get", "mget", "hgetall", "keys"} <= read
    assert not {"set", "del", "flushall"} & read
    no_dangerous = parse_commands(["+@read", "-@dangerous"])
    assert "keys" not in no_dangerous and "get" in no_dangerous


def test_rules_apply_left_to_right() -> None:
    assert "flushall" in parse_commands(["-@all", "+@all"])
    assert "flushall" not in parse_commands(["+@all", "-flushall"])
    assert "flushall" in parse_commands(["+@all", "-flushall", "+FLUSHALL"])
    assert "get" in parse_commands(["-@all", "+@read", "-get", "+get"])


def test_a_container_covers_its_subcommands() -> None:
    client = parse_commands(["+client"])
    assert {"client", "client|setname", "client|id", "client|kill"} <= client
    assert parse_commands(["+client", "-client|kill"]) == client - {"client|kill"}
    assert parse_commands(["+client|id"]) == ALWAYS | {"client|id"}


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (["+nosuchcmd"], "unknown command 'nosuchcmd'"),
        (["+@nosuchcat"], "unknown ACL category '@nosuchcat'"),
        (["get"], "'get' is not a command rule"),
        (["+"], "'+' is not a command rule"),
        (["+client|nosuch"], "unknown command 'client|nosuch'"),
    ],
)
def test_bad_command_rules(rules: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_commands(rules)


def test_categories_come_from_the_table() -> None:
    assert {"read", "write", "keyspace", "dangerous", "admin", "pubsub", "all"} <= CATEGORY_NAMES


def test_key_rules() -> None:
    assert parse_keys([]) == (False, (), frozenset())
    assert parse_keys(["~*"])[0] and parse_keys(["allkeys"])[0]
    assert parse_keys(["~app:*", "~{t}*", "~exact"]) == (
        False, (b"app:", b"{t}"), frozenset({b"exact"})
    )  # fmt: skip
    assert parse_keys(["~*", "resetkeys", "~a*"]) == (False, (b"a",), frozenset())


@pytest.mark.parametrize("rule", ["app:*", "~", "~a?c", "~a*b*", "~[ab]*", "%R~a*", "&chan"])
def test_bad_key_rules(rule: str) -> None:
    with pytest.raises(ValueError):
        parse_keys([rule])


def test_refusals_are_redis_texts() -> None:
    rules, keys = "-@all +@read +set -@dangerous", "~app:*"
    assert refusal(rules, keys, b"GET", b"app:1") is None
    assert refusal(rules, keys, b"SET", b"app:1", b"v") is None
    assert refusal(rules, keys, b"GET", b"other") == (
        b"-NOPERM this user has no permissions to access one of the keys used as arguments\r\n"
    )
    assert refusal(rules, keys, b"DEL", b"app:1") == (
        b"-NOPERM this user has no permissions to run the 'del' command\r\n"
    )
    assert refusal(rules, keys, b"CLIENT", b"SETNAME", b"x") == (
        b"-NOPERM this user has no permissions to run the 'client|setname' command\r\n"
    )
    assert refusal(rules, keys, b"AUTH", b"x") is None


def test_every_key_of_a_command_must_match() -> None:
    keys = "~a:* ~exact"
    assert refusal("+@all", keys, b"MGET", b"a:1", b"exact") is None
    assert refusal("+@all", keys, b"MGET", b"a:1", b"exact2") is not None
    assert refusal("+@all", keys, b"MSET", b"a:1", b"v", b"b:1", b"a:2") is not None
    assert refusal("+@all", keys, b"EVAL", b"return 1", b"1", b"b:1") is not None
    assert refusal("+@all", keys, b"EVAL", b"return 1", b"1", b"a:1", b"b:arg") is None
    assert refusal("+@all", keys, b"RENAME", b"a:1", b"b:1") is not None
    assert refusal("+@all", keys, b"KEYS", b"*") is None  # a pattern is no key


def test_the_command_is_checked_before_the_keys() -> None:
    assert refusal("+get", "~a:*", b"SET", b"b", b"v") == (
        b"-NOPERM this user has no permissions to run the 'set' command\r\n"
    )


def test_everything() -> None:
    assert compile_user(user("+@all", "~*")).everything
    assert not compile_user(user("+@all -flushall", "~*")).everything
    assert not compile_user(user("+@all", "~a*")).everything
    assert default_user(None).everything and default_user("pw").everything


def test_passwords() -> None:
    app = compile_user(user("+@all", password=b"right"))
    assert app.password_ok(b"right") and not app.password_ok(b"wrong")
    assert not app.password_ok(b"")
    assert default_user(None).password_ok(b"anything")  # nopass
    assert default_user("pw").password_ok(b"pw") and not default_user("pw").password_ok(b"p")


def test_users_authenticate() -> None:
    users = compile_users(ClientConfig(password="dpw", users=(user("+get", password=b"apw"),)))
    assert users.authenticate(None, b"dpw") is users.default
    assert users.authenticate(None, b"apw") is None
    app = users.authenticate(b"app", b"apw")
    assert app is not None and app.name == "app"
    assert users.authenticate(b"app", b"dpw") is None
    assert users.authenticate(b"nobody", b"apw") is None
    assert users.get("app") is app and users.get("nobody") is None


def test_compile_users_reports_every_bad_rule_with_its_path() -> None:
    bad = (user("+@all +nosuch", "~*"), user("+@all", "~a?"))
    with pytest.raises(ConfigError) as info:
        compile_users(ClientConfig(users=bad))
    assert info.value.errors == (
        "client.users[0].commands: unknown command 'nosuch'",
        "client.users[1].keys: '~a?': only ~*, ~prefix* and ~key are supported (no other glob)",
    )
