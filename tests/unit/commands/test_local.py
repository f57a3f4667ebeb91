"""commands/local.py and commands/checks.py, pure: SELECT and the session's db and lane, the
database argument's errors, INFO `# Keyspace` summed per db."""

from __future__ import annotations

import pytest

from proxy.commands.checks import db_argument_refusal, db_index
from proxy.commands.local import run_local, sum_keyspace
from proxy.commands.session import ClientRow, Session, db_of, lane_for, proto_of
from proxy.commands.spec import lookup
from proxy.commands.users import compile_users
from proxy.config.model import ClientConfig

NOT_INTEGER = b"-ERR value is not an integer or out of range\r\n"
OUT_OF_RANGE = b"-ERR DB index is out of range\r\n"
NOT_INT = b"-ERR value is out of range, value must between -2147483648 and 2147483647\r\n"


class View:
    """The proxy as local commands see it, with one client: `session`."""

    databases = 16

    def __init__(self, session: Session) -> None:
        self.session = session

    def info_sections(self) -> list[tuple[str, list[tuple[str, str]]]]:
        return []

    def client_rows(self) -> list[ClientRow]:
        return [ClientRow(self.session, "127.0.0.1:6380", 0.0, (0, 0, 0), -1, 0)]

    def client_row(self, client_id: int) -> ClientRow | None:
        return next((r for r in self.client_rows() if r.session.client_id == client_id), None)

    def kill_client(self, client_id: int) -> None:
        raise AssertionError("not in these tests")

    def unblock_client(self, client_id: int, error: bool) -> bool:
        return False


def run(session: Session, *args: bytes) -> bytes:
    spec = lookup(list(args))
    assert spec is not None
    return run_local(spec, list(args), session, View(session))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"0", 0),
        (b"15", 15),
        (b"16", OUT_OF_RANGE),
        (b"-1", OUT_OF_RANGE),
        (b"2147483647", OUT_OF_RANGE),
        (b"2147483648", NOT_INT),
        (b"-9223372036854775808", NOT_INT),
        (b"9223372036854775808", NOT_INTEGER),
        (b"01", NOT_INTEGER),
        (b"+1", NOT_INTEGER),
        (b" 1", NOT_INTEGER),
        (b"1_0", NOT_INTEGER),
        (b"", NOT_INTEGER),
        (b"x", NOT_INTEGER),
    ],
)
def test_db_index_follows_redis(text: bytes, expected: int | bytes) -> None:
    assert db_index(text, 16) == expected


def test_select_sets_db_and_lane_and_reset_goes_back_to_db_0() -> None:
    session = Session(1, "", compile_users(ClientConfig()))
    assert (session.db, session.lane) == (0, 2)
    assert run(session, b"SELECT", b"5") == b"+OK\r\n"
    assert (session.db, proto_of(session.lane), db_of(session.lane)) == (5, 2, 5)
    assert run(session, b"SELECT", b"16") == OUT_OF_RANGE
    assert session.db == 5  # a refused SELECT changes nothing
    assert run(session, b"HELLO", b"3").startswith(b"%")
    assert session.lane == lane_for(3, 5)
    assert b" db=5 " in run(session, b"CLIENT", b"INFO")
    assert run(session, b"RESET") == b"+RESET\r\n"
    assert (session.db, session.proto, session.lane) == (0, 2, 2)


def test_db_0_lanes_are_the_protocol_versions() -> None:
    assert lane_for(2, 0) == 2 and lane_for(3, 0) == 3
    assert len({lane_for(p, db) for p in (2, 3) for db in range(100)}) == 200


def test_move_checks_its_db_argument() -> None:
    spec = lookup([b"MOVE"])
    assert spec is not None
    assert db_argument_refusal(spec, [b"MOVE", b"k", b"3"], 4) is None
    assert db_argument_refusal(spec, [b"MOVE", b"k", b"4"], 4) == OUT_OF_RANGE
    assert db_argument_refusal(spec, [b"MOVE", b"k", b"x"], 4) == NOT_INTEGER
    get = lookup([b"GET"])
    assert get is not None and db_argument_refusal(get, [b"GET", b"4"], 4) is None


def test_keyspace_is_summed_per_db() -> None:
    a = b"# Keyspace\r\ndb0:keys=10,expires=2,avg_ttl=100\r\ndb3:keys=5,expires=0,avg_ttl=0\r\n"
    b = b"# Keyspace\r\ndb0:keys=1,expires=2,avg_ttl=300\r\ndb12:keys=7,expires=1,avg_ttl=9\r\n"
    assert sum_keyspace([a, b, b"# Keyspace\r\n"]) == (
        b"# Keyspace\r\n"
        b"db0:keys=11,expires=4,avg_ttl=200\r\n"
        b"db3:keys=5,expires=0,avg_ttl=0\r\n"
        b"db12:keys=7,expires=1,avg_ttl=9\r\n"
    )
    assert sum_keyspace([b"garbage\r\ndbx:keys=1\r\n"]) == b"# Keyspace\r\n"
