"""A config file with CRLF line ends under `serve --watch`, as one process and as a supervisor of
two workers: a rewrite that leaves the bytes unchanged (or a touch) is not a reload, an edit is one,
and the hash in /status is the hash of the bytes on disk, whoever read the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import RedisServer, free_port, holds_for, wait_until
from tests.support.runner import simple_config

CLI = [sys.executable, "-m", "proxy"]


def http(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def status(admin: int) -> dict[str, Any]:
    code, body = http(admin, "/status")
    return json.loads(body) if code == 200 else {}  # type: ignore[no-any-return]


def reloads_ok(admin: int) -> float:
    _, body = http(admin, "/metrics")
    found = re.search(
        r'^shardproxy_config_reloads_total\{outcome="ok"\} (\S+)$', body.decode(), re.M
    )
    return float(found.group(1)) if found else 0.0


def disk_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def stays(admin: int, generation: int, seconds: float, what: str) -> None:
    """The generation holds for `seconds` (the watcher debounces 200 ms: a spurious reload
    would show within the window)."""
    holds_for(lambda: status(admin).get("generation") == generation, seconds, what)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_crlf_config_reloads_on_edits_only(
    backends3: list[RedisServer], tmp_path: Path, served: list[Any], workers: int
) -> None:
    port, admin = free_port(), free_port()
    path, log = tmp_path / "proxy.yaml", tmp_path / "serve.log"
    addrs = [b.addr for b in backends3]

    def write(slowlog_ms: int) -> None:
        text = simple_config(addrs, port, admin, f"workers: {workers}\nslowlog_ms: {slowlog_ms}\n")
        path.write_bytes(text.replace("\n", "\r\n").encode())

    write(0)
    with open(log, "wb") as out:
        served.append(
            subprocess.Popen(
                [*CLI, "serve", "-c", str(path), "--watch"], stdout=out, stderr=subprocess.STDOUT
            )
        )
    wait_until(lambda: status(admin).get("generation") == 1, 30, "the proxy serving")
    write(0)  # rewritten with the same bytes
    os.utime(path)
    stays(admin, 1, 1.0, "no reload for an unchanged file")
    write(50)  # an edit
    wait_until(lambda: status(admin).get("generation") == 2, 10, "the edit picked up")
    write(50)  # the same bytes again, after a reload
    os.utime(path)
    stays(admin, 2, 1.0, "no reload for an unchanged file after a reload")
    assert reloads_ok(admin) == 1, log.read_text()
    assert status(admin)["config_hash"] == disk_hash(path)
