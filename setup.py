"""Build shardproxy: the request path compiled with mypyc when it can be, pure Python otherwise.

`pip install .` compiles the modules every request runs through (COMPILED below) into C
extensions, from the same typed sources, when mypyc (from the `mypy` build requirement), a C
compiler and the Python headers are there. It builds the pure-Python package instead, with a
warning, when `SHARDPROXY_PURE=1` is set or one of the three is missing.

Editable installs (`pip install -e .`) are pure unless `SHARDPROXY_COMPILE=1` is set: a compiled
module is a .so next to its .py in the tree, and it would keep running after the .py is edited.
scripts/test.sh builds the compiled modules in place (`python setup.py build_ext --inplace` with
SHARDPROXY_COMPILE=1), runs the suite on them and removes them again; proxy/build_info.py tells
which build runs and which in-tree .so files are older than their source.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
# Every package a request walks through; everything above `net` (server, jobs, workers, cli) and
# the config reader run at startup or in the background and stay Python.
COMPILED_PACKAGES = ("codec", "commands", "routing", "migration", "net")
COMPILED_MODULES = ("errors.py",)
# Commands that build extensions; egg_info, dist_info and sdist only read metadata.
BUILDING = {"build", "build_ext", "bdist_wheel", "install", "editable_wheel", "develop"}


def compiled_sources() -> list[str]:
    """Relative paths of the modules mypyc compiles (package __init__ files stay Python)."""
    paths = [f"proxy/{name}" for name in COMPILED_MODULES]
    for package in COMPILED_PACKAGES:
        for path in sorted((HERE / "proxy" / package).glob("*.py")):
            if path.name != "__init__.py":
                paths.append(path.relative_to(HERE).as_posix())
    return paths


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "no", "false")


def why_pure() -> str | None:
    """Why this build cannot or must not compile; None when it compiles."""
    if _flag("SHARDPROXY_PURE"):
        return "SHARDPROXY_PURE is set"
    editable = any(arg in ("editable_wheel", "develop") for arg in sys.argv)
    if editable and not _flag("SHARDPROXY_COMPILE"):
        return "an editable install is pure unless SHARDPROXY_COMPILE=1 (see setup.py)"
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypyc is not installed (it comes with the `mypy` package)"
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").exists():
        return f"the Python headers are missing ({include}/Python.h; Debian: python3-dev)"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(os.environ.get("CC", compiler).split()[0]) is None:
        return f"no C compiler ({compiler}; Debian: gcc)"
    return None


def extensions() -> list[object]:
    if not BUILDING.intersection(sys.argv):
        return []
    reason = why_pure()
    if reason is not None:
        print(f"WARNING: shardproxy builds as pure Python: {reason}", file=sys.stderr)
        return []
    from mypyc.build import mypycify

    os.chdir(HERE)  # mypyc names modules by their path relative to the working directory
    # One shared library inside the package (proxy/_native__mypyc*.so), not a top-level module.
    return list(mypycify(compiled_sources(), opt_level="3", group_name="proxy._native"))


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import the list above
    setup(ext_modules=extensions())
