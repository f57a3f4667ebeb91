"""The admin port's token and Origin check (admin: {addr, token, ...}), the refusal to start or
reload with a non-loopback admin address and no token, and `shardproxy status` sending the token.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import RedisServer, free_port, redis_servers
from tests.support.runner import ProxyThread, running_proxy, simple_config
from tests.support.wire import RespConn

CLI = [sys.executable, "-m", "proxy"]
TOKEN = "t0ken-for-tests"
GET_TOO = f"token: {TOKEN}, token_required_for_get: true"


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with redis_servers(1) as servers:
        yield servers[0]


def admin_config(server: RedisServer, admin: str, settings: str) -> str:
    text = simple_config([server.addr], 0, 0, "")
    return text.replace("admin: 127.0.0.1:0\n", f"admin: {{addr: '{admin}', {settings}}}\n")


@contextlib.contextmanager
def serving(text: str, tmp_path: Path) -> Iterator[ProxyThread]:
    """A proxy on `text`, written to a file for its reloads."""
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    with running_proxy(text, str(path)) as proxy:
        yield proxy


@pytest.fixture
def guarded(server: RedisServer, tmp_path: Path) -> Iterator[tuple[ProxyThread, int]]:
    port = free_port()
    with serving(admin_config(server, f"127.0.0.1:{port}", f"token: {TOKEN}"), tmp_path) as p:
        yield p, port


def http(
    port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    data = b"" if method == "POST" else None
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_post_reload_needs_the_token(guarded: tuple[ProxyThread, int]) -> None:
    _proxy, port = guarded
    status, body = http(port, "/reload", "POST")
    assert status == 401
    assert json.loads(body)["error"].startswith("missing or wrong admin token")
    assert http(port, "/reload", "POST", bearer("wrong"))[0] == 401
    assert http(port, "/reload", "POST", {"Authorization": TOKEN})[0] == 401  # no scheme
    status, body = http(port, "/reload", "POST", bearer(TOKEN))
    assert status == 200 and json.loads(body)["generation"] == 2
    assert http(port, "/reload", "POST", {"authorization": f"bearer {TOKEN}"})[0] == 200


def test_get_is_open_unless_token_required_for_get(guarded: tuple[ProxyThread, int]) -> None:
    _proxy, port = guarded
    for path in ("/status", "/metrics", "/healthz", "/readyz"):
        assert http(port, path)[0] == 200


def test_token_required_for_get(server: RedisServer) -> None:
    port = free_port()
    text = admin_config(
        server, f"127.0.0.1:{port}", f"token: {TOKEN}, token_required_for_get: true"
    )
    proxy = ProxyThread(text).start()
    try:
        for path in ("/status", "/metrics"):
            assert http(port, path)[0] == 401
            assert http(port, path, headers=bearer(TOKEN))[0] == 200
        for path in ("/healthz", "/readyz"):  # probes of load balancers and Kubernetes
            assert http(port, path)[0] == 200
    finally:
        proxy.stop()


def test_cross_origin_requests_are_refused(server: RedisServer, tmp_path: Path) -> None:
    port = free_port()
    text = simple_config([server.addr], 0, port)  # no token: loopback, as today
    with serving(text, tmp_path) as proxy:
        # What a browser page elsewhere sends: a "simple" text/plain POST, no preflight.
        evil = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
        status, body = http(port, "/reload", "POST", evil)
        assert status == 403
        assert "cross-origin" in json.loads(body)["error"]
        assert proxy.server is not None and proxy.server.generation == 1
        assert http(port, "/status", headers={"Origin": "null"})[0] == 403
        assert http(port, "/status", headers={"Origin": f"http://127.0.0.1:{port + 1}"})[0] == 403
        for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
            assert http(port, "/status", headers={"Origin": origin})[0] == 200
        assert http(port, "/reload", "POST")[0] == 200  # no Origin: curl, the CLI


def test_origin_is_checked_before_the_token(guarded: tuple[ProxyThread, int]) -> None:
    _proxy, port = guarded
    headers = {**bearer(TOKEN), "Origin": "https://evil.example"}
    assert http(port, "/reload", "POST", headers)[0] == 403


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "SHARDPROXY_ADMIN_TOKEN"}
    full_env.update(env or {})
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, env=full_env, check=False
    )


def test_serve_refuses_a_non_loopback_admin_without_token(
    server: RedisServer, tmp_path: Path
) -> None:
    path = tmp_path / "open.yaml"
    path.write_text(simple_config([server.addr], free_port(), 0).replace(
        "admin: 127.0.0.1:0", f"admin: 0.0.0.0:{free_port()}"
    ))  # fmt: skip
    for command in ("serve", "check"):
        done = run_cli(command, "-c", str(path))
        assert done.returncode == 2
        assert "admin.token: required: the admin port 0.0.0.0:" in done.stderr
        assert "admin.allow_insecure: true" in done.stderr
    path.write_text(admin_config(server, f"0.0.0.0:{free_port()}", "allow_insecure: true"))
    assert run_cli("check", "-c", str(path)).returncode == 0


def test_a_reload_that_drops_the_token_of_a_public_admin_is_refused(
    server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    text = admin_config(server, f"0.0.0.0:{port}", f"token: {TOKEN}")
    with serving(text, tmp_path) as proxy:
        assert proxy.path is not None
        Path(proxy.path).write_text(text.replace(f", token: {TOKEN}", ""))
        status, body = http(port, "/reload", "POST", bearer(TOKEN))
        assert status == 400
        assert "admin.token: required" in json.loads(body)["message"]
        assert http(port, "/reload", "POST")[0] == 401  # the old token still guards it


def test_a_reload_changes_the_token(guarded: tuple[ProxyThread, int]) -> None:
    proxy, port = guarded
    assert proxy.path is not None
    Path(proxy.path).write_text(Path(proxy.path).read_text().replace(TOKEN, "n3w"))
    assert http(port, "/reload", "POST", bearer(TOKEN))[0] == 200
    assert http(port, "/reload", "POST", bearer(TOKEN))[0] == 401
    assert http(port, "/reload", "POST", bearer("n3w"))[0] == 200


def test_status_cli_sends_the_token(server: RedisServer) -> None:
    port = free_port()
    text = admin_config(
        server, f"127.0.0.1:{port}", f"token: {TOKEN}, token_required_for_get: true"
    )
    proxy = ProxyThread(text).start()
    addr = f"127.0.0.1:{port}"
    try:
        refused = run_cli("status", "--admin", addr)
        assert refused.returncode == 1 and "UNREACHABLE" in refused.stdout
        assert "Unauthorized" in refused.stdout
        by_env = run_cli("status", "--admin", addr, env={"SHARDPROXY_ADMIN_TOKEN": TOKEN})
        assert by_env.returncode == 0, by_env.stdout + by_env.stderr
        by_option = run_cli("status", "--admin", addr, "--token", TOKEN)
        assert by_option.returncode == 0, by_option.stdout + by_option.stderr
        assert addr in by_option.stdout and "UNREACHABLE" not in by_option.stdout
    finally:
        proxy.stop()


def test_workers_supervisor_admin_needs_the_token_and_workers_check_users(
    backends3: list[RedisServer], tmp_path: Path
) -> None:
    from tests.integration.test_workers import supervised  # the supervisor as operators run it

    users = 'client:\n  users: [{name: app, password: apw, commands: "+get", keys: "~a*"}]\n'

    def render(port: int, admin: int) -> str:
        text = simple_config([b.addr for b in backends3], port, admin, "workers: 2\n" + users)
        return text.replace(
            f"admin: 127.0.0.1:{admin}", f"admin: {{addr: '127.0.0.1:{admin}', token: {TOKEN}}}"
        )

    with supervised(backends3, tmp_path, render=render) as sup:
        assert http(sup.admin, "/reload", "POST")[0] == 401
        assert http(sup.admin, "/reload", "POST", {"Origin": "http://evil.example"})[0] == 403
        for _ in range(8):  # connections land on both workers: each checks the user's rules
            with RespConn(sup.port) as conn:
                assert conn.call("AUTH", "app", "apw")[0] == b"+OK\r\n"
                assert conn.call("GET", "b")[0].startswith(b"-NOPERM")
                assert conn.call("SET", "a", "1")[0].startswith(b"-NOPERM")
        sup.path.write_text(sup.path.read_text().replace('"+get"', '"+get +set"'))
        status, body = http(sup.admin, "/reload", "POST", bearer(TOKEN))
        assert status == 200, body
        with RespConn(sup.port) as conn:
            assert conn.call("AUTH", "app", "apw")[0] == b"+OK\r\n"
            assert conn.call("SET", "a", "1")[0] == b"+OK\r\n"
        sup.path.write_text(sup.path.read_text().replace('"+get +set"', '"+nosuch"'))
        status, body = http(sup.admin, "/reload", "POST", bearer(TOKEN))
        assert status == 400 and "unknown command 'nosuch'" in json.loads(body)["message"]
