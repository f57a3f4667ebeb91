"""The backend user's ACL rules (proxy/commands/acl.py): pure, from the command table and
allow_flush."""

from __future__ import annotations

import pytest

from proxy.commands import table as command_table
from proxy.commands.acl import (
    KEPT,
    PROXY_SENDS,
    AclProbes,
    build_probes,
    build_rules,
    judge,
    probe_args,
    proxy_needs,
    proxy_refuses,
)
from proxy.commands.spec import Kind, all_specs


def test_rules_start_with_every_key_and_channel_and_deny_admin_and_dangerous() -> None:
    rules = build_rules(allow_flush=False).rules()
    assert rules[:6] == ("on", "~*", "&*", "+@all", "-@admin", "-@dangerous")


@pytest.mark.parametrize("allow_flush", [False, True])
def test_the_escapes_are_denied_by_name(allow_flush: bool) -> None:
    rules = build_rules(allow_flush).rules()
    for name in ("migrate", "swapdb"):
        assert f"-{name}" in rules
    for name in ("flushall", "flushdb"):
        assert (f"+{name}" in rules) is allow_flush
        assert (f"-{name}" in rules) is not allow_flush


def test_dangerous_commands_the_proxy_needs_are_given_back() -> None:
    allowed = build_rules(allow_flush=False).allowed
    assert allowed == ("config|get", "info", "keys", "restore", "sort", "sort_ro")


def test_every_allowed_and_denied_name_is_a_redis_command() -> None:
    rules = build_rules(allow_flush=False)
    for name in (*rules.allowed, *rules.denied):
        assert name in command_table.ACL_CATEGORIES, name


def test_needs_and_refusals_are_disjoint_and_cover_the_deny_list() -> None:
    needs, refused = proxy_needs(False), proxy_refuses(False)
    assert not needs & refused
    assert PROXY_SENDS - {"command"} <= needs  # a container is named by its subcommands
    assert needs >= KEPT
    denied = {s.name for s in all_specs() if s.kind is Kind.DENIED}
    containers = {n.split("|")[0] for n in command_table.ACL_CATEGORIES if "|" in n}
    known = set(command_table.ACL_CATEGORIES) - containers
    assert (denied & known) - KEPT <= refused


def test_the_user_command_resets_the_user_first() -> None:
    line = build_rules(allow_flush=False).setuser("shardproxy", "s3cret")
    assert line.startswith("ACL SETUSER shardproxy reset on >s3cret ~* &* +@all -@admin")


def test_probes_have_a_valid_arity() -> None:
    assert probe_args("migrate") == ("migrate", "0", "0", "0", "0", "0")
    assert probe_args("config|set") == ("config", "set", "0", "0")
    assert probe_args("shutdown") == ("shutdown",)


def test_probes_follow_allow_flush() -> None:
    assert "flushall" in build_probes(False).must_deny
    assert "flushall" in build_probes(True).must_allow
    assert "restore" in build_probes(False).must_allow


def test_judge_names_what_is_too_broad_and_too_narrow() -> None:
    probes = AclProbes(must_deny=("migrate", "swapdb"), must_allow=("get", "restore"))
    verdict = judge(probes, [True, False, True, False])
    assert verdict.too_broad == ("migrate",)
    assert verdict.too_narrow == ("restore",)
    assert not verdict.ok
    assert verdict.describe() == "allows MIGRATE; refuses what the proxy needs: RESTORE"
    assert judge(probes, [False, False, True, True]).ok
