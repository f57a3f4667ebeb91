"""Which build of shardproxy runs: `compiled` (the request path as mypyc C extensions) or `pure`.

setup.py compiles the request path's modules when it can (see its docstring); a compiled module
is a `.so` (`.pyd`) next to, or instead of, its `.py`. `BUILD` is read once, from where the client
connection module would be loaded from, without importing it. `stale()` lists compiled modules
in a source tree whose `.py` was edited after they were built: Python would load the `.so` and
silently run the old code (scripts/test.sh and setup.py explain how in-tree builds are made).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

_PROBE = "proxy.net.client"  # on the path of every request, compiled whenever anything is
# A wheel's files are written in any order within moments: only a later edit counts as stale.
_STALE_SLACK_S = 2.0


def _build() -> str:
    spec = importlib.util.find_spec(_PROBE)
    origin = spec.origin if spec is not None else None
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return "compiled" if origin is not None and origin.endswith(suffixes) else "pure"


BUILD = _build()


def stale(root: Path | None = None) -> list[str]:
    """Source files (relative to root, the package) edited after their compiled module was built."""
    root = root or Path(__file__).resolve().parent
    out = []
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        # A module's .so is a shim into one shared library (setup.py: proxy/_native__mypyc),
        # which holds the code of all of them: a rebuild may leave the shim as it was.
        shared = [lib.stat().st_mtime for lib in root.glob(f"*__mypyc{suffix}")]
        for ext in root.rglob(f"*{suffix}"):
            source = ext.with_name(ext.name[: -len(suffix)] + ".py")
            built = max([ext.stat().st_mtime, *shared])
            if source.exists() and source.stat().st_mtime > built + _STALE_SLACK_S:
                out.append(source.relative_to(root).as_posix())
    return sorted(out)
