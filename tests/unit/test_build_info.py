"""Which build runs (compiled or pure), and stale compiled modules in a source tree."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import runpy
from pathlib import Path

import pytest

from proxy import build_info

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def test_build_is_the_one_the_test_run_asked_for() -> None:
    # scripts/test.sh sets it for each of its two runs, so CI cannot test pure twice by mistake
    expected = os.environ.get("SHARDPROXY_EXPECT_BUILD")
    if expected is None:
        pytest.skip("SHARDPROXY_EXPECT_BUILD is not set (scripts/test.sh sets it)")
    assert expected == build_info.BUILD


def test_compiled_build_compiles_every_listed_module() -> None:
    listed = runpy.run_path(str(ROOT / "setup.py"))["compiled_sources"]()
    assert "proxy/net/client.py" in listed and "proxy/routing/ring.py" in listed
    origins = []
    for path in listed:
        spec = importlib.util.find_spec(path.removesuffix(".py").replace("/", "."))
        assert spec is not None and spec.origin is not None
        origins.append(spec.origin.endswith(SUFFIX))
    assert all(origins) if build_info.BUILD == "compiled" else not any(origins)


def test_a_source_edited_after_its_build_is_stale(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    for name in ("net/a", "net/b", "c"):
        (tmp_path / f"{name}.py").write_text("")
        (tmp_path / f"{name}{SUFFIX}").write_bytes(b"")
    (tmp_path / "d.py").write_text("")  # never compiled: not stale
    os.utime(tmp_path / "net/b.py", (0, 0))  # older than its build
    for name in ("net/a", "c"):
        built = (tmp_path / f"{name}{SUFFIX}").stat().st_mtime
        os.utime(tmp_path / f"{name}.py", (built + 60, built + 60))
    assert build_info.stale(tmp_path) == ["c.py", "net/a.py"]
    assert build_info.stale() == []  # the tree under test (conftest refuses to run otherwise)
