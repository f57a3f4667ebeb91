"""net/mirror.py: the command that removes on the other side what a blocking pop returned, the
very element (a push that reached the other side after the pop ran must not be removed)."""

from __future__ import annotations

import pytest

from proxy.commands.spec import lookup
from proxy.net.mirror import mirror_command


def mirror(line: str, value: object) -> list[list[bytes]]:
    args = [a.encode() for a in line.split()]
    spec = lookup(args)
    assert spec is not None
    return mirror_command(spec, args, value)


@pytest.mark.parametrize(
    ("line", "value", "want"),
    [
        ("BLPOP q 0", [b"q", b"x"], [[b"LREM", b"q", b"1", b"x"]]),
        ("BRPOP q 0", [b"q", b"x"], [[b"LREM", b"q", b"-1", b"x"]]),
        ("BLMPOP 0 1 q RIGHT COUNT 2", [b"q", [b"a", b"b"]],
         [[b"LREM", b"q", b"-1", b"a"], [b"LREM", b"q", b"-1", b"b"]]),
        ("BLMOVE q w RIGHT LEFT 0", b"x", [[b"LREM", b"q", b"-1", b"x"], [b"LPUSH", b"w", b"x"]]),
        ("BRPOPLPUSH q w 0", b"x", [[b"LREM", b"q", b"-1", b"x"], [b"LPUSH", b"w", b"x"]]),
        ("BZPOPMIN z 0", [b"z", b"m", b"1"], [[b"ZREM", b"z", b"m"]]),
        ("BZMPOP 0 1 z MIN", [b"z", [[b"m", b"1"]]], [[b"ZREM", b"z", b"m"]]),
        ("BLPOP q 0", None, []),
    ],
)  # fmt: skip
def test_the_very_element_is_removed(line: str, value: object, want: list[list[bytes]]) -> None:
    assert mirror(line, value) == want
