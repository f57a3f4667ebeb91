"""Script bodies seen during a migration, so that an EVALSHA also runs on the other pool.

A secondary write must run on the target exactly as on the source, but EVALSHA names a script
the target may never have loaded (it was loaded on the source before the migration began). So,
in phases that write both pools: EVAL and SCRIPT LOAD bodies are remembered by their SHA1; an
EVALSHA whose body is known goes to the other pool as EVAL of that body; an EVALSHA whose body
the proxy has not seen is answered -NOSCRIPT, Redis's own reply, on which every client library
sends the script again (EVAL, or SCRIPT LOAD and EVALSHA), and then it is known.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

MAX_SCRIPTS = 1000  # bodies kept (the least recently used go first)


class ScriptBodies:
    def __init__(self) -> None:
        self._bodies: OrderedDict[bytes, bytes] = OrderedDict()  # sha1 hex (lower) -> body

    def remember(self, body: bytes) -> None:
        sha = hashlib.sha1(body, usedforsecurity=False).hexdigest().encode()
        self._bodies[sha] = body
        self._bodies.move_to_end(sha)
        while len(self._bodies) > MAX_SCRIPTS:
            self._bodies.popitem(last=False)

    def body(self, sha: bytes) -> bytes | None:
        return self._bodies.get(sha.lower())

    def as_eval(self, args: list[bytes]) -> list[bytes]:
        """`args` for the other pool: an EVALSHA of a known body becomes EVAL of it."""
        if args[0].lower() != b"evalsha":
            return args
        body = self.body(args[1])
        return args if body is None else [b"EVAL", body, *args[2:]]
