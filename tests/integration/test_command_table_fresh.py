"""The committed command table against a real redis-server: fresh, and keyed like Redis keys it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import hiredis
import pytest

from proxy.commands import table as command_table
from proxy.commands.spec import arity_error, lookup, unknown_error
from tests.support.processes import RedisServer, redis_command

REPO = Path(__file__).resolve().parents[2]


def load_generator() -> ModuleType:
    path = REPO / "scripts" / "gen_command_table.py"
    spec = importlib.util.spec_from_file_location("gen_command_table", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_table_is_what_the_generator_reads_now(redis1: RedisServer) -> None:
    gen = load_generator()
    version, rows, categories = gen.read_server_full(redis1.port)
    if version != command_table.REDIS_VERSION:
        pytest.skip(f"redis-server is {version}; the table is from {command_table.REDIS_VERSION}")
    committed = {row[0]: row for row in command_table.COMMANDS}
    fresh = {row[0]: row for row in rows}
    assert sorted(committed) == sorted(fresh)
    for name, row in fresh.items():
        assert committed[name][:7] == row[:7], name  # name arity flags first last step specs
    text = (REPO / "proxy" / "commands" / "table.py").read_text()
    assert dict(command_table.ACL_CATEGORIES) == categories
    assert gen.render_table(version, rows, categories) == text, "rerun scripts/gen_command_table.py"


# Valid requests (after COMMAND GETKEYS) with keys: the proxy must find what Redis finds.
GETKEYS_CORPUS = [
    "GET k",
    "SET k v EX 10 GET",
    "HSET h f v f2 v2",
    "LPUSH l a b",
    "ZADD z 1 m",
    "EXPIRE k 10",
    "OBJECT ENCODING k",
    "XINFO STREAM s",
    "XGROUP CREATE s g $ MKSTREAM",
    "MEMORY USAGE k",
    "MGET a b c",
    "MSET a 1 b 2 c 3",
    "MSETNX a 1 b 2",
    "DEL a b c",
    "UNLINK a",
    "EXISTS a b",
    "TOUCH a b",
    "RENAME a b",
    "SMOVE a b m",
    "LMOVE a b LEFT RIGHT",
    "BITOP AND d a b c",
    "PFMERGE d a b",
    "PFCOUNT a b",
    "COPY a b REPLACE",
    "SINTERSTORE d a b",
    "SUNION a b c",
    "LCS a b",
    "EVAL s 0",
    "EVAL s 2 a b arg",
    "EVALSHA 0123456789012345678901234567890123456789 1 k",
    "FCALL f 3 a b c x",
    "ZUNIONSTORE d 2 a b WEIGHTS 1 2",
    "ZINTERSTORE d 3 a b c AGGREGATE MAX",
    "ZUNION 2 a b WITHSCORES",
    "ZDIFFSTORE d 2 a b",
    "ZINTERCARD 2 a b LIMIT 5",
    "SINTERCARD 3 a b c",
    "ZRANGESTORE d s 0 -1",
    "LMPOP 2 a b LEFT COUNT 3",
    "ZMPOP 1 z MIN",
    "BLMPOP 0 2 a b RIGHT",
    "BZMPOP 1 2 a b MAX COUNT 2",
    "BLPOP a b 0",
    "BRPOPLPUSH a b 0",
    "WATCH a b",
    "XREAD STREAMS a b 0 0",
    "XREAD COUNT 10 BLOCK 5 STREAMS a 0",
    "XREADGROUP GROUP g c COUNT 1 NOACK STREAMS a b > >",
    "SORT k",
    "SORT k STORE d",
    "SORT k BY w_* LIMIT 0 10 GET # GET o_* STORE d",
    "SORT_RO k BY w_* GET #",
    "GEORADIUS k 15 37 200 km WITHDIST STORE d",
    "GEORADIUS k 15 37 200 km COUNT 3 STOREDIST d",
    "GEORADIUSBYMEMBER k m 100 km STORE d",
    "GEORADIUS_RO k 15 37 200 km",
    "GEOSEARCHSTORE d s FROMMEMBER m BYRADIUS 1 km",
    "BITFIELD k GET u8 0",
    "RESTORE k 0 payload REPLACE",
]


def _getkeys(port: int, args: list[bytes]) -> list[bytes]:
    reply = redis_command(port, "COMMAND", "GETKEYS", *args)
    if isinstance(reply, hiredis.ReplyError):
        raise AssertionError(f"COMMAND GETKEYS {args!r}: {reply}")
    assert isinstance(reply, list)
    return reply


@pytest.mark.parametrize("line", GETKEYS_CORPUS)
def test_key_positions_agree_with_command_getkeys(redis1: RedisServer, line: str) -> None:
    args = [w.encode() for w in line.split(" ")]
    spec = lookup(args)
    assert spec is not None
    assert [args[p] for p in spec.key_positions(args)] == _getkeys(redis1.port, args)


@pytest.mark.parametrize(
    "line",
    ["foo a b", "foo", "nope " + "x" * 150 + " y", "client nope", "SCRIPT bad x", "xinfo zz"],
)
def test_unknown_error_is_what_redis_says(redis1: RedisServer, line: str) -> None:
    args = [w.encode() for w in line.split(" ")]
    reply = redis_command(redis1.port, *args)
    assert isinstance(reply, hiredis.ReplyError)
    assert lookup(args) is None
    assert unknown_error(args) == b"-%s\r\n" % str(reply).encode()


@pytest.mark.parametrize("line", ["GET", "client setname", "CLIENT", "object encoding", "mset"])
def test_arity_error_is_what_redis_says(redis1: RedisServer, line: str) -> None:
    args = [w.encode() for w in line.split(" ")]
    reply = redis_command(redis1.port, *args)
    assert isinstance(reply, hiredis.ReplyError)
    spec = lookup(args)
    assert spec is not None and not spec.arity_ok(len(args))
    assert arity_error(spec) == b"-%s\r\n" % str(reply).encode()
