"""The command table: classification, key positions, lookup, error texts, and the README list."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from types import ModuleType

import pytest

from proxy.commands import table as command_table
from proxy.commands.spec import (
    COMMANDS,
    DENIED,
    EXTRA_ROWS,
    FANOUT_MERGES,
    LOCAL,
    MULTI_MERGES,
    SAME_BACKEND,
    TRANSACTION,
    CommandSpec,
    Kind,
    Merge,
    all_specs,
    arity_error,
    lookup,
    unknown_error,
)

REPO = Path(__file__).resolve().parents[3]
SPECS = {spec.name: spec for spec in all_specs()}
CONTAINERS = {name.split("|")[0] for name in SPECS if "|" in name}


def load_generator() -> ModuleType:
    path = REPO / "scripts" / "gen_command_table.py"
    spec = importlib.util.spec_from_file_location("gen_command_table", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def words(line: str) -> list[bytes]:
    return [w.encode() for w in line.split(" ")]


# --- every spec -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", all_specs(), ids=lambda s: s.name)
def test_every_spec_is_consistent(spec: CommandSpec) -> None:
    assert isinstance(spec.kind, Kind)
    assert spec.name == spec.name.lower() == spec.label
    assert spec.write == ("write" in spec.flags)
    assert (spec.merge is not None) == (spec.kind in (Kind.MULTI, Kind.FANOUT))
    assert spec.needs_flush_permission == (spec.name in ("flushdb", "flushall", "function|flush"))
    assert spec.arity != 0


@pytest.mark.parametrize(
    "spec", [s for s in all_specs() if s.kind is Kind.SINGLE], ids=lambda s: s.name
)
def test_single_key_commands_have_their_key_at_first_key(spec: CommandSpec) -> None:
    argc = abs(spec.arity)  # the fewest arguments the arity allows
    args = [b"arg%d" % i for i in range(argc)]
    assert 0 < spec.first_key < argc
    assert spec.key_positions(args) == [spec.first_key]
    assert spec.key_positions([*args, b"STORE", b"x", b"STREAMS"]) == [spec.first_key]
    assert "movablekeys" not in spec.flags


def test_override_table_names_exist() -> None:
    named = [*MULTI_MERGES, *FANOUT_MERGES, *LOCAL, *TRANSACTION, *SAME_BACKEND, *DENIED]
    assert [name for name in named if name not in SPECS] == []
    assert len(named) == len(set(named)), "a command is listed in two kinds"


def test_table_is_sorted_and_from_the_recorded_version() -> None:
    names = [row[0] for row in command_table.COMMANDS]
    assert names == sorted(names)
    assert command_table.REDIS_VERSION.startswith("7.")
    assert len(names) + len(EXTRA_ROWS) == len(all_specs()) > 300


# --- kinds ------------------------------------------------------------------------------------

DOCUMENTED = {
    Kind.SINGLE: "get set incr hset lpush zadd expire object|encoding xinfo|stream memory|usage "
    "georadius_ro xgroup|create bitfield restore move",
    Kind.MULTI: "mget mset del unlink exists touch",
    Kind.SAME_BACKEND: "rename smove lmove sinterstore zunionstore bitop pfmerge copy msetnx eval "
    "evalsha eval_ro fcall fcall_ro sort sort_ro georadius georadiusbymember xread xreadgroup "
    "lmpop zmpop sintercard lcs",
    Kind.FANOUT: "dbsize keys scan script|load script|exists script|flush script|kill "
    "function|kill flushdb flushall function|flush randomkey config|get function|load "
    "function|delete function|restore function|list function|dump config|set",
    Kind.LOCAL: "ping echo quit select hello auth command command|info command|count "
    "command|getkeys command|docs info client|setname client|getname client|id client|info "
    "client|list client|kill client|reply client|unblock reset time acl|whoami",
    Kind.TRANSACTION: "multi exec discard watch unwatch",
    Kind.BLOCKING: "blpop brpop brpoplpush blmove bzpopmin bzpopmax blmpop bzmpop",
    Kind.PUBSUB: "subscribe psubscribe ssubscribe unsubscribe punsubscribe sunsubscribe publish "
    "spublish pubsub|channels",
    Kind.DENIED: "debug shutdown replicaof slaveof cluster|info "
    "cluster|nodes module|load save bgsave bgrewriteaof monitor sync psync migrate acl|setuser "
    "failover latency|latest slowlog|get client|tracking "
    "client|pause swapdb wait lastsave role function|stats script|debug "
    "object|help readonly readwrite "
    "asking restore-asking pfdebug lolwut",
}


@pytest.mark.parametrize(
    ("kind", "name"), [(kind, name) for kind, names in DOCUMENTED.items() for name in names.split()]
)
def test_documented_kind(kind: Kind, name: str) -> None:
    assert SPECS[name].kind is kind


@pytest.mark.parametrize(
    ("name", "merge", "step"),
    [
        ("mget", Merge.VALUES, 1),
        ("mset", Merge.OK, 2),
        ("del", Merge.SUM, 1),
        ("unlink", Merge.SUM, 1),
        ("exists", Merge.SUM, 1),
        ("touch", Merge.SUM, 1),
    ],
)
def test_multi_merges_and_steps(name: str, merge: Merge, step: int) -> None:
    assert SPECS[name].merge is merge
    assert SPECS[name].key_step == step
    assert SPECS[name].first_key == 1


@pytest.mark.parametrize(
    ("name", "merge"),
    [
        ("dbsize", Merge.SUM),
        ("keys", Merge.CONCAT),
        ("scan", Merge.SCAN),
        ("script|load", Merge.FIRST),
        ("script|exists", Merge.ALL),
        ("script|flush", Merge.OK),
        ("script|kill", Merge.KILL),
        ("function|kill", Merge.KILL),
        ("flushdb", Merge.OK),
        ("flushall", Merge.OK),
    ],
)
def test_fanout_merges(name: str, merge: Merge) -> None:
    assert SPECS[name].merge is merge


def _not_overridden(spec: CommandSpec) -> bool:
    overrides = (MULTI_MERGES, FANOUT_MERGES, LOCAL, TRANSACTION, SAME_BACKEND, DENIED)
    return not any(spec.name in names for names in overrides)


def test_flags_catch_what_the_override_table_forgot() -> None:
    for spec in filter(_not_overridden, all_specs()):
        if "admin" in spec.flags:
            assert spec.kind is Kind.DENIED, spec.name
        elif "pubsub" in spec.flags:
            assert spec.kind is Kind.PUBSUB, spec.name
        elif "blocking" in spec.flags:
            assert spec.kind is Kind.BLOCKING, spec.name
        elif not any(ks.is_key for ks in spec.key_specs):
            assert spec.kind is Kind.DENIED, spec.name
        else:
            assert spec.kind in (Kind.SINGLE, Kind.SAME_BACKEND), spec.name


def test_every_command_subcommand_is_local_and_containers_alone_are_not_routable() -> None:
    assert {s.kind for n, s in SPECS.items() if n.startswith("command|")} == {Kind.LOCAL}
    for container in CONTAINERS - {"command"}:
        assert not SPECS[container].arity_ok(1), container


def test_keyed_commands_that_can_name_several_keys_are_never_single() -> None:
    for spec in all_specs():
        if "movablekeys" in spec.flags or len([k for k in spec.key_specs if k.is_key]) > 1:
            assert spec.kind is not Kind.SINGLE, spec.name


# --- key positions ----------------------------------------------------------------------------

KEY_CASES = [
    ("GET k", [1]),
    ("SET k v GET", [1]),
    ("INCR k", [1]),
    ("EXPIRE k 10", [1]),
    ("OBJECT ENCODING k", [2]),
    ("XINFO STREAM k FULL", [2]),
    ("MEMORY USAGE k SAMPLES 5", [2]),
    ("XGROUP CREATE k g $ MKSTREAM", [2]),
    ("MGET a b c", [1, 2, 3]),
    ("MSET a 1 b 2 c 3", [1, 3, 5]),
    ("MSETNX a 1 b 2", [1, 3]),
    ("DEL a b", [1, 2]),
    ("EXISTS a", [1]),
    ("RENAME a b", [1, 2]),
    ("SMOVE a b m", [1, 2]),
    ("LMOVE a b LEFT RIGHT", [1, 2]),
    ("RPOPLPUSH a b", [1, 2]),
    ("COPY a b REPLACE", [1, 2]),
    ("BITOP AND d a b", [2, 3, 4]),
    ("PFMERGE d a b", [1, 2, 3]),
    ("PFCOUNT a", [1]),
    ("SINTERSTORE d a b", [1, 2, 3]),
    ("LCS a b", [1, 2]),
    ("EVAL s 0", []),
    ("EVAL s 0 arg", []),
    ("EVAL s 2 a b x y", [3, 4]),
    ("EVALSHA sha 1 k arg", [3]),
    ("EVAL_RO s 1 k", [3]),
    ("FCALL f 2 a b", [3, 4]),
    ("FCALL_RO f 0", []),
    ("ZUNIONSTORE d 2 a b WEIGHTS 1 2", [1, 3, 4]),
    ("ZINTERSTORE d 1 a", [1, 3]),
    ("ZDIFFSTORE d 2 a b", [1, 3, 4]),
    ("ZUNION 2 a b WITHSCORES", [2, 3]),
    ("ZINTERCARD 2 a b LIMIT 1", [2, 3]),
    ("SINTERCARD 1 a", [2]),
    ("ZRANGESTORE d s 0 -1", [1, 2]),
    ("LMPOP 2 a b LEFT COUNT 2", [2, 3]),
    ("ZMPOP 1 z MIN", [2]),
    ("BLMPOP 0 2 a b LEFT", [3, 4]),
    ("BZMPOP 0 1 z MAX", [3]),
    ("BLPOP a b 0", [1, 2]),
    ("WATCH a b", [1, 2]),
    ("XREAD STREAMS a b 0 0", [2, 3]),
    ("XREAD COUNT 2 STREAMS a 0", [4]),
    ("xread count 2 block 10 streams a $", [6]),
    ("XREADGROUP GROUP g c STREAMS a b > >", [5, 6]),
    ("XREADGROUP GROUP g c COUNT 1 NOACK STREAMS a >", [8]),
    ("SORT k", [1]),
    ("SORT k STORE d", [1, 3]),
    ("SORT k BY w_* LIMIT 0 10 GET # STORE d", [1, 10]),
    ("sort k get store", [1]),
    ("SORT k STORE d1 STORE d2", [1, 5]),
    ("SORT_RO k BY w_* GET #", [1]),
    ("GEORADIUS k 0 0 10 km", [1]),
    ("GEORADIUS k 0 0 10 km STORE d", [1, 7]),
    ("GEORADIUS k 0 0 10 km COUNT 3 storedist d", [1, 9]),
    ("GEORADIUSBYMEMBER k m 10 km STORE d", [1, 6]),
    ("GEORADIUS_RO k 0 0 10 km", [1]),
    ("GEOSEARCHSTORE d s FROMMEMBER m BYRADIUS 1 km", [1, 2]),
    ("SPUBLISH channel message", []),
    ("PING", []),
    ("CLIENT SETNAME x", []),
]


@pytest.mark.parametrize(("line", "expected"), KEY_CASES)
def test_key_positions(line: str, expected: list[int]) -> None:
    args = words(line)
    spec = lookup(args)
    assert spec is not None
    assert spec.key_positions(args) == expected


MALFORMED_CASES = [
    ("EVAL s abc a", []),  # not a number: the spec yields nothing, Redis will say why
    ("EVAL s -1 a", []),
    ("EVAL s 007 a", []),
    ("EVAL s +1 a", []),
    ("EVAL s 1_0 a", []),
    ("EVAL s", []),
    ("EVAL s 5 a b", [3, 4]),  # too large: clipped to the arguments there are
    ("EVAL s 99999999999999999999 a", []),  # beyond a 64-bit integer
    ("EVAL s 9223372036854775807 a", [3]),
    ("ZUNIONSTORE d 5 a", [1, 3]),
    ("ZUNIONSTORE d x a", [1]),
    ("ZUNIONSTORE d 0 a", [1]),
    ("LMPOP 3 a", [2]),
    ("XREAD STREAMS", []),
    ("XREAD STREAMS a", []),
    ("XREAD STREAMS a b 0", [2]),
    ("XREAD COUNT 1", []),
    ("GET", []),
    ("MSET a 1 b", [1, 3]),
    ("SORT", []),
    ("SORT k STORE", [1]),
    ("GEORADIUS k 0 0 10 km STORE", [1]),
]


@pytest.mark.parametrize(("line", "expected"), MALFORMED_CASES)
def test_key_positions_of_malformed_requests(line: str, expected: list[int]) -> None:
    args = words(line)
    spec = lookup(args)
    assert spec is not None
    assert spec.key_positions(args) == expected


def test_key_positions_never_raise_on_junk() -> None:
    rng = random.Random(7)
    junk = [b"", b"0", b"1", b"2", b"-1", b"999999999999", b"9" * 5000, b"STORE", b"STREAMS"]
    junk += [b"KEYS", b"LIMIT", b"GET", b"BY", b"x", b"\x00", b"\xff"]
    for spec in all_specs():
        for _ in range(30):
            name = spec.name.split("|")
            args = [n.encode() for n in name] + rng.choices(junk, k=rng.randrange(0, 9))
            positions = spec.key_positions(args)
            assert all(len(name) <= p < len(args) for p in positions), (spec.name, args)


# --- lookup and errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ("GET k", "get"),
        ("get k", "get"),
        ("gEt k", "get"),
        ("CLIENT SETNAME x", "client|setname"),
        ("client setname x", "client|setname"),
        ("Client SetName x", "client|setname"),
        ("object encoding k", "object|encoding"),
        ("XINFO stream k", "xinfo|stream"),
        ("SCRIPT LOAD s", "script|load"),
        ("COMMAND", "command"),
        ("command count", "command|count"),
        ("CLIENT", "client"),
        ("config", "config"),
    ],
)
def test_lookup_is_case_insensitive_with_subcommands(line: str, name: str) -> None:
    spec = lookup(words(line))
    assert spec is not None
    assert spec.name == name


@pytest.mark.parametrize("line", ["FOO", "foo bar", "CLIENT nope", "client|setname x", "GET|X k"])
def test_lookup_unknown(line: str) -> None:
    assert lookup(words(line)) is None


def test_lookup_edge_cases() -> None:
    assert lookup([]) is None
    assert lookup([b""]) is None
    assert lookup([b"\xff\x00"]) is None
    assert lookup([b"GET", b"k"]) is COMMANDS[b"GET"] is lookup([b"get", b"k"])
    assert all(key == key.upper() for key in COMMANDS)
    assert b"CLIENT" in COMMANDS and b"CLIENT|SETNAME" not in COMMANDS


@pytest.mark.parametrize(
    ("name", "argc", "ok"),
    [
        ("get", 2, True),
        ("get", 1, False),
        ("get", 3, False),
        ("set", 3, True),
        ("set", 7, True),
        ("set", 2, False),
        ("mset", 3, True),
        ("mset", 2, False),
        ("client|setname", 3, True),
        ("client|setname", 2, False),
        ("client", 1, False),
        ("command", 1, True),
        ("eval", 3, True),
        ("eval", 2, False),
        ("ping", 1, True),
        ("ping", 2, True),
        ("ping", 3, True),  # arity -1: PING itself refuses more than one argument
        ("echo", 2, True),
        ("echo", 3, False),
    ],
)
def test_arity_ok(name: str, argc: int, ok: bool) -> None:
    assert SPECS[name].arity_ok(argc) is ok


def test_arity_error_text() -> None:
    assert arity_error(SPECS["get"]) == b"-ERR wrong number of arguments for 'get' command\r\n"
    assert (
        arity_error(SPECS["client|setname"])
        == b"-ERR wrong number of arguments for 'client|setname' command\r\n"
    )


@pytest.mark.parametrize(
    ("args", "reply"),
    [
        (
            [b"foo", b"a", b"b"],
            b"-ERR unknown command 'foo', with args beginning with: 'a' 'b' \r\n",
        ),
        ([b"foo"], b"-ERR unknown command 'foo', with args beginning with: \r\n"),
        ([b"Foo", b""], b"-ERR unknown command 'Foo', with args beginning with: '' \r\n"),
        ([b"foo", b"a\r\nb"], b"-ERR unknown command 'foo', with args beginning with: 'a  b' \r\n"),
        ([b"foo", b"a\x00b"], b"-ERR unknown command 'foo', with args beginning with: 'a' \r\n"),
        ([b"client", b"nope"], b"-ERR unknown subcommand 'nope'. Try CLIENT HELP.\r\n"),
        ([b"Xinfo", b"zz", b"k"], b"-ERR unknown subcommand 'zz'. Try XINFO HELP.\r\n"),
    ],
)
def test_unknown_error_text(args: list[bytes], reply: bytes) -> None:
    assert unknown_error(args) == reply


def test_unknown_error_truncates_like_redis() -> None:
    reply = unknown_error([b"x" * 200, b"a" * 100, b"b" * 100, b"c"])
    assert reply.startswith(b"-ERR unknown command '" + b"x" * 128 + b"', ")
    shown = reply.split(b"with args beginning with: ", 1)[1][:-2]
    assert shown == b"'" + b"a" * 100 + b"' '" + b"b" * 25 + b"' "


# --- docs -------------------------------------------------------------------------------------


def test_readme_command_list_matches_the_table() -> None:
    gen = load_generator()
    readme = (REPO / "README.md").read_text()
    block = gen.render_readme_block(
        [*command_table.COMMANDS, *EXTRA_ROWS], command_table.REDIS_VERSION
    )
    assert gen.replace_readme_block(readme, block) == readme, (
        "README's command list drifted from the command table: "
        "run python scripts/gen_command_table.py --readme README.md"
    )


def test_readme_names_every_routable_command() -> None:
    readme = (REPO / "README.md").read_text()
    for spec in all_specs():
        if spec.name not in CONTAINERS or spec.arity_ok(1):
            assert spec.name.replace("|", " ") in readme, spec.name
