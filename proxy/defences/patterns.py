"""Key patterns: globs as Redis's KEYS reads them (`*`, `?`, `[abc]`, `[^a]`, `\\x`), compiled
once into one regular expression over bytes."""

from __future__ import annotations

import re
from collections.abc import Iterable


def glob_regex(pattern: bytes) -> bytes:
    out: list[bytes] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i : i + 1]
        i += 1
        if c == b"*":
            out.append(b".*")
        elif c == b"?":
            out.append(b".")
        elif c == b"\\" and i < n:
            out.append(re.escape(pattern[i : i + 1]))
            i += 1
        elif c == b"[":
            end = pattern.find(b"]", i + 1 if pattern[i : i + 1] in (b"^", b"!") else i)
            if end < 0:
                out.append(b"\\[")
                continue
            body = pattern[i:end]
            negate = body[:1] in (b"^", b"!")
            body = body[1:] if negate else body
            inner = b"".join(
                b"-" if ch == b"-" else re.escape(ch)
                for ch in (body[j : j + 1] for j in range(len(body)))
            )
            out.append(b"[" + (b"^" if negate else b"") + inner + b"]")
            i = end + 1
        else:
            out.append(re.escape(c))
    return b"".join(out)


class KeyPatterns:
    """Does a key match any of the patterns? An empty set matches nothing."""

    __slots__ = ("_match", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        if not self.patterns:
            self._match = None
            return
        body = b"|".join(glob_regex(p.encode()) for p in self.patterns)
        self._match = re.compile(b"(?:" + body + b")\\Z", re.DOTALL).match

    def __call__(self, key: bytes) -> bool:
        return self._match is not None and self._match(key) is not None
