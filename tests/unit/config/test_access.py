"""proxy/config/access.py: the admin section, client.users and client.allow_cidrs."""

from __future__ import annotations

import hashlib
from ipaddress import ip_network

import pytest

from proxy.config.schema import Address, AdminAuth, ProxyConfig, UserConfig, parse_config
from proxy.errors import ConfigError

BAD_NAME = "must be a name without spaces, not starting with <>~&@+-#%"
POOL = "pools: {p: {servers: ['127.0.0.1:7001']}}\n"


def parse(text: str, env: dict[str, str] | None = None) -> ProxyConfig:
    return parse_config(POOL + text, env=env or {})


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return list(info.value.errors)


def test_admin_short_form_has_no_token() -> None:
    config = parse("admin: 127.0.0.1:9999\n")
    assert config.admin == Address("127.0.0.1", 9999)
    assert config.admin_auth == AdminAuth()


def test_admin_mapping_reads_token_from_env() -> None:
    config = parse(
        "admin: {addr: '0.0.0.0:9380', token: '${T}', token_required_for_get: true}\n",
        env={"T": "s3cret"},
    )
    assert config.admin == Address("0.0.0.0", 9380)
    assert config.admin_auth == AdminAuth("s3cret", token_required_for_get=True)
    assert "s3cret" not in repr(config.admin_auth)


@pytest.mark.parametrize("addr", ["0.0.0.0:9380", "10.1.2.3:9380", "[::]:9380", "admin.example:1"])
def test_non_loopback_admin_needs_a_token(addr: str) -> None:
    for text in (f"admin: '{addr}'\n", f"admin: {{addr: '{addr}'}}\n"):
        (problem,) = problems(text)
        assert problem.startswith("admin.token: required: the admin port")
        assert "allow_insecure" in problem


@pytest.mark.parametrize("addr", ["127.0.0.1:9380", "127.0.0.2:9380", "[::1]:9380", "localhost:1"])
def test_loopback_admin_needs_no_token(addr: str) -> None:
    assert parse(f"admin: '{addr}'\n").admin_auth.token is None


def test_allow_insecure_lets_a_non_loopback_admin_start_without_token() -> None:
    config = parse("admin: {addr: '0.0.0.0:9380', allow_insecure: true}\n")
    assert config.admin_auth.allow_insecure


def test_an_empty_token_is_no_token() -> None:
    (problem,) = problems("admin: {addr: '0.0.0.0:9380', token: '${EMPTY:-}'}\n")
    assert problem.startswith("admin.token: required")


def test_token_required_for_get_needs_a_token() -> None:
    assert problems("admin: {token_required_for_get: true}\n") == [
        "admin.token_required_for_get: needs admin.token"
    ]


def test_admin_mapping_rejects_unknown_keys_and_bad_types() -> None:
    assert sorted(problems("admin: {addr: '127.0.0.1:1', tokn: x, allow_insecure: 1}\n")) == [
        "admin.allow_insecure: expected a boolean (true or false), got 1",
        "admin.tokn: unknown key",
    ]


def test_users_are_read_with_password_digests() -> None:
    digest = hashlib.sha256(b"pw2").hexdigest()
    config = parse(
        "client:\n  users:\n"
        "    - {name: app, password: '${P}', commands: '+@read -keys', keys: ['~app:*', '~x']}\n"
        f"    - {{name: ro, password_sha256: '{digest.upper()}', commands: [+get, +mget]}}\n",
        env={"P": "pw1"},
    )
    app, ro = config.client.users
    assert app == UserConfig(
        "app", hashlib.sha256(b"pw1").digest(), ("+@read", "-keys"), ("~app:*", "~x")
    )
    assert ro == UserConfig("ro", bytes.fromhex(digest), ("+get", "+mget"), ())
    assert "pw1" not in repr(app)


def test_bad_users_are_reported_with_their_paths() -> None:
    found = problems(
        "client:\n  users:\n"
        "    - {name: default, password: x}\n"
        "    - {name: 'a b', password: x}\n"
        "    - {name: c}\n"
        "    - {name: d, password: x, password_sha256: ab}\n"
        "    - {name: e, password_sha256: abc}\n"
        "    - {name: f, password: x}\n"
        "    - {name: f, password: x, rules: y}\n"
        "    - {password: x}\n"
        "    - {name: '+x', password: x}\n"
    )
    assert found == [
        "client.users[0].name: the default user is client.password's: name this user otherwise",
        f"client.users[1].name: {BAD_NAME}, got 'a b'",
        "client.users[2]: give exactly one of password and password_sha256",
        "client.users[3]: give exactly one of password and password_sha256",
        "client.users[4].password_sha256: must be 64 hex digits (sha256sum of the password)",
        "client.users[6].rules: unknown key",
        "client.users[6].name: duplicate user 'f'",
        "client.users[7].name: required",
        f"client.users[8].name: {BAD_NAME}, got '+x'",
    ]


def test_allow_cidrs() -> None:
    config = parse("client: {allow_cidrs: [127.0.0.1/32, '10.0.0.0/8', '::1', 'fd00::/8']}\n")
    assert config.client.allow_cidrs == tuple(
        ip_network(n) for n in ("127.0.0.1/32", "10.0.0.0/8", "::1/128", "fd00::/8")
    )
    assert parse("").client.allow_cidrs == ()


def test_bad_allow_cidrs() -> None:
    assert problems("client: {allow_cidrs: [10.1.2.3/8, nope, 7]}\n") == [
        "client.allow_cidrs[0]: not a network (10.1.2.3/8 has host bits set)",
        "client.allow_cidrs[1]: not a network ('nope' does not appear to be an IPv4 or IPv6"
        " network)",
        "client.allow_cidrs[2]: expected a string, got 7",
    ]
    assert problems("client: {allow_cidrs: 10.0.0.0/8}\n") == [
        "client.allow_cidrs: expected a list of networks [\"127.0.0.0/8\", ...], got '10.0.0.0/8'"
    ]
