"""Config reloads under traffic: dozens of valid and invalid reloads while pipelining clients run
(no failed request, no dropped connection, generation and reload counters exact, connections
to untouched backends kept, replaced ones drained then closed), POST /reload on the admin port,
and `serve --watch` following a file edit and a Kubernetes ConfigMap symlink swap.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import redis

from proxy.config.reader import config_hash
from tests.support.loadgen import Load, Worker
from tests.support.processes import RedisServer, free_port, holds_for, redis_servers, wait_until
from tests.support.runner import ProxyThread

CLI = [sys.executable, "-m", "proxy"]


@pytest.fixture(scope="module")
def servers() -> Iterator[list[RedisServer]]:
    with redis_servers(4) as four:  # three for the route pool, one for a pool not in use
        yield four


@pytest.fixture(autouse=True)
def _flush(servers: list[RedisServer]) -> None:
    for s in servers:
        with s.client() as c:
            c.flushall()


@dataclass(frozen=True)
class Knobs:
    """What the valid reloads change: none of it moves a key."""

    timeout_ms: int = 2000  # backend.command_timeout_ms: the backends are replaced
    slowlog_ms: int = 0
    spare: bool = False  # a second pool, not routed to


def render(servers: list[RedisServer], port: int, admin: int, knobs: Knobs) -> str:
    route = "".join(f"      - {s.addr}:1 r{i + 1}\n" for i, s in enumerate(servers[:3]))
    text = (
        f"listen: 127.0.0.1:{port}\nadmin: 127.0.0.1:{admin}\nslowlog_ms: {knobs.slowlog_ms}\n"
        f"backend:\n  command_timeout_ms: {knobs.timeout_ms}\n  retry_backoff_ms: 50\n"
        f"pools:\n  main:\n    servers:\n{route}"
    )
    if knobs.spare:
        text += f"  spare:\n    servers:\n      - {servers[3].addr}:1 x1\n"
    return text + "route: main\n"


def invalid_variants(text: str, servers: list[RedisServer], port: int) -> list[tuple[str, str]]:
    """(config text, what the refusal says) for each kind of bad reload, from a valid text."""
    spare = f"  spare:\n    servers:\n      - {servers[3].addr}:1 x1\n"
    with_spare = (
        text if "spare:" in text else text.replace("route: main\n", spare + "route: main\n")
    )
    first = f"{servers[0].addr}:1 r1"
    return [
        (text + "pools: [\n", "invalid YAML"),
        (text + "bogus_key: 1\n", "bogus_key: unknown key"),
        (text.replace("route: main", "route: nope"), "no pool named 'nope'"),
        (text.replace(f"- {first}\n", f"- {first}\n      - {servers[0].addr}:1 r9\n"), "duplicate"),
        (text.replace(f"- {first}", "- 127.0.0.1:70000:1 r1"), "port must be 1..65535"),
        (with_spare + "migration: {to: spare, phase: cut-read}\n", "illegal phase step"),
        (text.replace(f"listen: 127.0.0.1:{port}", f"listen: 127.0.0.1:{port + 1}"), "listen"),
        (with_spare.replace("route: main", "route: spare"), "cannot switch route"),
    ]


def http(url: str, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metric(admin: int, name: str, labels: str = "") -> float:
    """One sample of the admin /metrics, 0 when absent."""
    _, body = http(f"http://127.0.0.1:{admin}/metrics")
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", body.decode(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def proxy_connection_ids(server: RedisServer) -> set[int]:
    """The ids of the proxy's data connections on a backend (they are named `shardproxy`)."""
    with server.client() as c:
        return {int(x["id"]) for x in c.client_list() if x["name"] == "shardproxy"}


def test_reloads_under_pipelining_clients(servers: list[RedisServer], tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    path = tmp_path / "proxy.yaml"
    knobs = Knobs()
    path.write_text(render(servers, port, admin, knobs))
    proxy = ProxyThread(path.read_text(), str(path)).start()
    assert proxy.server is not None
    server = proxy.server

    async def get_status() -> dict[str, Any]:
        return server.status()  # type: ignore[no-any-return]

    def generation() -> int:
        return int(proxy.call(get_status())["generation"])

    workers = [
        Worker(port, "a", protocol=2, pipeline=16, seed=1),
        Worker(port, "b", protocol=3, pipeline=32, seed=2),
        Worker(port, "c", protocol=2, pipeline=0, seed=3),
        Worker(port, "d", protocol=3, pipeline=8, seed=4),
    ]
    load = Load(workers).start()
    route = servers[:3]
    try:
        wait_until(load.progress(200), 30, "load running")
        accepted = metric(admin, "shardproxy_client_connections_total")
        ok_before = metric(admin, "shardproxy_config_reloads_total", 'outcome="ok"')
        valid = invalid = 0
        toggles = ["timeout", "spare", "slowlog", "spare", "slowlog", "timeout"]
        for n in range(40):
            via_http = n % 3 == 1
            before = generation()
            if n % 2 == 0:  # a valid reload
                toggle = toggles[(n // 2) % len(toggles)]
                if toggle == "timeout":
                    knobs = replace(knobs, timeout_ms=4500 - knobs.timeout_ms)
                elif toggle == "spare":
                    knobs = replace(knobs, spare=not knobs.spare)
                else:
                    knobs = replace(knobs, slowlog_ms=50 - knobs.slowlog_ms)
                text, why = render(servers, port, admin, knobs), ""
                valid += 1
                kept = {s.port: proxy_connection_ids(s) for s in route}
                assert all(kept.values()), kept  # RESP2 and RESP3 connections, in use
            else:
                current = render(servers, port, admin, knobs)
                variants = invalid_variants(current, servers, port)
                text, why = variants[(n // 2) % len(variants)]
                invalid += 1
            path.write_text(text)
            if via_http:
                code, body = http(f"http://127.0.0.1:{admin}/reload", "POST")
                reply = json.loads(body)
                ok, message = reply["ok"], reply["message"]
                assert code == (200 if ok else 400), (code, reply)
                assert reply["generation"] == generation()
            else:
                ok, message = proxy.call(server.reload_from_file())
            if why:
                assert not ok, f"reload {n} accepted, expected refused: {why}"
                assert why in message, message
                assert generation() == before
                path.write_text(render(servers, port, admin, knobs))  # the operator fixes it
            else:
                assert ok, f"reload {n} ({toggle}) refused: {message}"
                assert message == f"generation {before + 1}"
                assert generation() == before + 1
            wait_until(load.progress(30), 30, f"load after reload {n}")
            assert not load.problems(), "\n".join(load.problems())
            if not why and toggle == "timeout":
                # new settings: every backend is replaced; the old connections drain, then close
                wait_until(
                    lambda old=kept: all(
                        not (proxy_connection_ids(s) & old[s.port]) for s in route
                    ),
                    10,
                    "the replaced backends' connections closed",
                )
                wait_until(lambda: all(proxy_connection_ids(s) for s in route), 10, "new ones")
            elif not why:  # the route backends are untouched: their connections are kept
                assert {s.port: proxy_connection_ids(s) for s in route} == kept
            if not why and toggle == "spare" and not knobs.spare:
                wait_until(lambda: not proxy_connection_ids(servers[3]), 10, "spare closed")
        assert (valid, invalid) == (20, 20)
        assert generation() == 1 + valid
        assert metric(admin, "shardproxy_config_generation") == 1 + valid
        ok_after = metric(admin, "shardproxy_config_reloads_total", 'outcome="ok"')
        assert ok_after - ok_before == valid
        assert metric(admin, "shardproxy_config_reloads_total", 'outcome="refused"') == invalid
        # no client reconnected: nothing accepted since the load started, all four still there
        assert metric(admin, "shardproxy_client_connections_total") == accepted
        assert proxy.call(get_status())["clients"] == len(workers)
    finally:
        load.stop()
        proxy.stop()
    assert not load.problems(), "\n".join(load.problems())
    assert all(w.client_id == w.client_id_end for w in workers)


# --- serve --watch --------------------------------------------------------------------------


class Served:
    """`shardproxy serve -c FILE --watch` as a subprocess, its log in a file."""

    def __init__(self, path: Path, admin: int, log: Path) -> None:
        self.admin = admin
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [*CLI, "serve", "-c", str(path), "--watch"], stdout=out, stderr=subprocess.STDOUT
            )
        wait_until(lambda: self.status()["generation"] == 1, 20, "the proxy serving")

    def status(self) -> dict[str, Any]:
        assert self.proc.poll() is None, self.log.read_text()
        code, body = http(f"http://127.0.0.1:{self.admin}/status")
        assert code == 200
        return json.loads(body)  # type: ignore[no-any-return]

    def wait_generation(self, generation: int, text: str, what: str) -> None:
        """The proxy runs `text` (by its hash) as `generation`, within a few seconds."""
        wait_until(lambda: self.status()["config_hash"] == config_hash(text), 5, what)
        assert self.status()["generation"] == generation, self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                assert self.proc.wait(10) == 0, self.log.read_text()
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait(5)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    started: list[Served] = []

    def start(path: Path, admin: int) -> Served:
        served = Served(path, admin, tmp_path / f"serve-{len(started)}.log")
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


def test_watch_follows_file_edits(servers: list[RedisServer], tmp_path: Path, serve: Any) -> None:
    port, admin = free_port(), free_port()
    path = tmp_path / "proxy.yaml"
    texts = [render(servers, port, admin, Knobs(slowlog_ms=n)) for n in (0, 50, 0, 20, 30)]
    path.write_text(texts[0])
    served = serve(path, admin)
    with redis.Redis(port=port, protocol=3, max_connections=1) as c:
        assert c.set(b"watched", b"1")
        client_id = c.client_id()
        path.write_text(texts[1])  # an edit in place
        served.wait_generation(2, texts[1], "the edit picked up")
        os.utime(path)  # touched, rewritten with the same content: not a reload
        path.write_text(texts[1])
        holds_for(lambda: served.status()["generation"] == 2, 1.0, "no reload for a touch")
        path.write_text(texts[2])
        served.wait_generation(3, texts[2], "the next edit picked up")
        path.write_text(texts[2] + "bogus_key: 1\n")  # refused: the old config keeps serving
        wait_until(
            lambda: metric(admin, "shardproxy_config_reloads_total", 'outcome="refused"') == 1,
            5,
            "the bad edit refused",
        )
        assert served.status()["generation"] == 3
        path.write_text(texts[3])
        served.wait_generation(4, texts[3], "the fixed file picked up")
        tmp = tmp_path / ".proxy.yaml.swp"  # how editors save: write aside, rename over
        tmp.write_text(texts[4])
        os.replace(tmp, path)
        served.wait_generation(5, texts[4], "the renamed-over file picked up")
        assert c.get(b"watched") == b"1"
        assert c.client_id() == client_id  # the client's connection was kept throughout


def test_watch_follows_a_configmap_symlink_swap(
    servers: list[RedisServer], tmp_path: Path, serve: Any
) -> None:
    """Kubernetes mounts a ConfigMap as proxy.yaml -> ..data/proxy.yaml, ..data -> a timestamped
    directory; an update writes a new directory, swaps ..data atomically and removes the old."""
    port, admin = free_port(), free_port()
    mount = tmp_path / "config"
    mount.mkdir()

    def publish(n: int, text: str) -> None:
        stamped = mount / f"..2026_01_01_00_00_0{n}.00000000{n}"
        stamped.mkdir()
        (stamped / "proxy.yaml").write_text(text)
        link = mount / "..data_tmp"
        os.symlink(stamped.name, link)
        old = os.readlink(mount / "..data") if (mount / "..data").is_symlink() else None
        os.replace(link, mount / "..data")
        if old is not None:
            for f in (mount / old).iterdir():
                f.unlink()
            (mount / old).rmdir()

    texts = [render(servers, port, admin, Knobs(slowlog_ms=n)) for n in (0, 50, 10)]
    publish(1, texts[0])
    os.symlink("..data/proxy.yaml", mount / "proxy.yaml")
    served = serve(mount / "proxy.yaml", admin)
    with redis.Redis(port=port, protocol=2, max_connections=1) as c:
        assert c.set(b"k", b"v")
        publish(2, texts[1])
        served.wait_generation(2, texts[1], "the first swap picked up")
        publish(3, texts[2])
        served.wait_generation(3, texts[2], "the second swap picked up")
        assert c.get(b"k") == b"v"
