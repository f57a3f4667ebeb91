"""Inline commands (`PING\r\n` typed into telnet), pure: one line to arguments, as Redis's
sdssplitargs splits it (quotes, escapes, and the same errors). hiredis rejects inline commands:
the proxy parses them on purpose.
"""

from __future__ import annotations

from typing import Final

from proxy.codec.resp import ProtocolError


def parse_inline(line: bytes) -> list[bytes]:
    """Split one inline command line like Redis's sdssplitargs (quotes and escapes)."""
    line = line.rstrip(b"\r")
    if b'"' not in line and b"'" not in line:
        return line.split()
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i : i + 1].isspace():
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        quote = 0  # 0 none, 1 double, 2 single
        while i < n:
            c = line[i]
            if quote == 1:
                if c == 92 and i + 3 < n and line[i + 1] == 120 and _ishex(line[i + 2 : i + 4]):
                    cur.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    cur.append(_ESCAPES.get(line[i], line[i]))
                elif c == 34:
                    if i + 1 < n and not line[i + 1 : i + 2].isspace():
                        raise ProtocolError("unbalanced quotes in request")
                    quote = 0
                    i += 1
                    break
                else:
                    cur.append(c)
            elif quote == 2:
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                    cur.append(39)
                elif c == 39:
                    if i + 1 < n and not line[i + 1 : i + 2].isspace():
                        raise ProtocolError("unbalanced quotes in request")
                    quote = 0
                    i += 1
                    break
                else:
                    cur.append(c)
            elif c in b" \t\n\r":
                break
            elif c == 34:
                quote = 1
            elif c == 39:
                quote = 2
            else:
                cur.append(c)
            i += 1
        if quote:
            raise ProtocolError("unbalanced quotes in request")
        args.append(bytes(cur))


_ESCAPES: Final = {110: 10, 114: 13, 116: 9, 98: 8, 97: 7}


def _ishex(b: bytes) -> bool:
    return len(b) == 2 and all(c in b"0123456789abcdefABCDEF" for c in b)
