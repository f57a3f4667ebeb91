"""TLS on both sides against real processes: redis-py 8 and redis-cli clients over TLS (TLS-only
`listen`, or a TLS port next to a plain one), client certificates required, TLS-only
redis-server backends that require the proxy's client certificate (shared, blocking, pub/sub
and job connections, the ACL check), the backend's certificate checks (CA, name, verify modes),
certificates swapped by a reload while old connections keep working, bad files refused at
start and on reload, and TLS under `workers: 2`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from proxy.config.schema import parse_config
from proxy.jobs.executor import open_backends
from tests.support.processes import free_port, redis_servers, wait_until
from tests.support.runner import ProxyThread, running_proxy, simple_config
from tests.support.tls import CA, Issued, TLSRedis, client_context, tls_conn, tls_redis_servers

CLI = [sys.executable, "-m", "proxy"]


@pytest.fixture(scope="module")
def plain_backends() -> Iterator[list[str]]:
    with redis_servers(2) as servers:
        yield [s.addr for s in servers]


@pytest.fixture
def proxy_cert(tls_ca: CA, tmp_path: Path) -> Issued:
    """The proxy's server certificate, at a path of this test's own (reloads re-issue it)."""
    return tls_ca.issue("proxy", into=tmp_path / "proxy")


def client_tls(cert: Issued, *lines: str) -> str:
    extra = "".join(f"    {line}\n" for line in lines)
    return f"client:\n  tls:\n    cert: {cert.cert}\n    key: {cert.key}\n{extra}"


def backend_tls(config: str, settings: str) -> str:
    return config.replace("backend:\n", f"backend:\n  tls: {settings}\n", 1)


def tls_redis_py(port: int, ca: CA, mine: Issued | None = None) -> redis.Redis:
    kwargs = {"ssl_certfile": str(mine.cert), "ssl_keyfile": str(mine.key)} if mine else {}
    return redis.Redis(port=port, ssl=True, ssl_ca_certs=str(ca.cert), socket_timeout=5, **kwargs)


def metric(proxy: ProxyThread, sample: str) -> float:
    assert proxy.server is not None
    port = proxy.server._config.admin.port  # type: ignore[union-attr]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body = resp.read().decode()
    found = re.search(r"^" + re.escape(sample) + r" (\S+)$", body, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def reload(proxy: ProxyThread) -> tuple[bool, str]:
    assert proxy.server is not None
    return proxy.call(proxy.server.reload_from_file())  # type: ignore[no-any-return]


@contextlib.contextmanager
def proxy_from_file(text: str, path: Path) -> Iterator[ProxyThread]:
    path.write_text(text)
    with running_proxy(text, str(path)) as proxy:
        yield proxy


# -- clients -----------------------------------------------------------------------------------


def test_tls_only_listen_serves_redis_py_and_redis_cli(
    plain_backends: list[str], tls_ca: CA, proxy_cert: Issued
) -> None:
    text = simple_config(plain_backends, free_port(), free_port(), client_tls(proxy_cert))
    with running_proxy(text) as proxy:
        with tls_redis_py(proxy.port, tls_ca) as client:
            assert client.set("tls:a", "1") and client.get("tls:a") == b"1"
            pipe = client.pipeline(transaction=False)
            for i in range(50):
                pipe.set(f"tls:k{i}", i)
            pipe.mget([f"tls:k{i}" for i in range(50)])
            assert pipe.execute()[-1] == [str(i).encode() for i in range(50)]
        cli = ["redis-cli", "-p", str(proxy.port), "--tls", "--cacert", str(tls_ca.cert)]
        out = subprocess.run([*cli, "GET", "tls:a"], capture_output=True, text=True, timeout=10)
        assert out.stdout.strip() == "1", out
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as plain:
            plain.sendall(b"PING\r\n")  # plain text on the TLS port: closed
            assert plain.recv(100) == b""
        failures = 'shardproxy_client_tls_handshake_failures_total{kind="protocol"}'
        wait_until(lambda: metric(proxy, failures) == 1, 5, "the plain client counted")


def test_plain_listen_and_a_tls_port_side_by_side(
    plain_backends: list[str], tls_ca: CA, proxy_cert: Issued
) -> None:
    tls_port = free_port()
    tls = client_tls(proxy_cert, f"listen: 127.0.0.1:{tls_port}")
    with running_proxy(simple_config(plain_backends, free_port(), free_port(), tls)) as proxy:
        assert proxy.server is not None and proxy.server.tls_port == tls_port
        with redis.Redis(port=proxy.port) as plain, tls_redis_py(tls_port, tls_ca) as secure:
            assert plain.set("side:k", "plain")
            assert secure.get("side:k") == b"plain"
            assert secure.set("side:k", "tls") and plain.get("side:k") == b"tls"
        with tls_conn(tls_port, client_context(tls_ca)) as conn:
            assert conn.serial == proxy_cert.serial


def test_a_required_client_certificate_refuses_clients_without_one(
    plain_backends: list[str], tls_ca: CA, proxy_cert: Issued, tmp_path: Path
) -> None:
    tls = client_tls(proxy_cert, f"ca: {tls_ca.cert}", "require_client_cert: true")
    stranger = CA(tmp_path / "other-ca", name="not the proxy's CA")
    with running_proxy(simple_config(plain_backends, free_port(), free_port(), tls)) as proxy:
        with tls_redis_py(proxy.port, tls_ca, tls_ca.client()) as client:
            assert client.ping()
        for mine in (None, stranger.client()):  # TLS 1.3: refused at the first read
            with pytest.raises(OSError), tls_conn(proxy.port, client_context(tls_ca, mine)) as conn:
                conn.call("PING")
        sample = 'shardproxy_client_tls_handshake_failures_total{kind="certificate"}'
        wait_until(lambda: metric(proxy, sample) == 2, 5, "both refusals counted")
        assert proxy.server is not None
        wait_until(lambda: not proxy.server.clients, 5, "no client kept")  # type: ignore[union-attr]
        cli = ["redis-cli", "-p", str(proxy.port), "--tls", "--cacert", str(tls_ca.cert)]
        mine = ["--cert", str(tls_ca.client().cert), "--key", str(tls_ca.client().key)]
        out = subprocess.run([*cli, *mine, "PING"], capture_output=True, text=True, timeout=10)
        assert out.stdout.strip() == "PONG", out


def test_handshakes_count_against_the_client_limit(
    plain_backends: list[str], tls_ca: CA, proxy_cert: Issued
) -> None:
    tls = client_tls(proxy_cert).replace("client:\n", "client:\n  max_connections: 1\n")
    with running_proxy(simple_config(plain_backends, free_port(), free_port(), tls)) as proxy:
        context = client_context(tls_ca)
        with tls_conn(proxy.port, context) as first:
            assert first.call("PING") == b"PONG"
            with pytest.raises(OSError), tls_conn(proxy.port, context):
                pass  # closed before any TLS: the handshake fails
            assert metric(proxy, 'shardproxy_client_errors_total{kind="limit"}') == 1
            assert first.call("PING") == b"PONG"

        def served() -> bool:  # room again once the first has left
            with tls_conn(proxy.port, context) as again:
                return again.call("PING") == b"PONG"

        wait_until(served, 5, "a new client served again")


# -- backends ----------------------------------------------------------------------------------


def tls_backend_config(servers: list[TLSRedis], ca: CA, extra: str = "") -> str:
    mine = ca.client()
    text = simple_config([s.addr for s in servers], free_port(), free_port(), extra)
    return backend_tls(text, f"{{ca: {ca.cert}, cert: {mine.cert}, key: {mine.key}}}")


def test_every_backend_connection_speaks_tls(tls_backends: list[TLSRedis], tls_ca: CA) -> None:
    """The backends accept TLS only, with the proxy's client certificate: shared connections,
    a blocked BLPOP's and a subscriber's own connections, the ACL check and the CLI's jobs."""
    text = tls_backend_config(tls_backends, tls_ca)
    with running_proxy(text) as proxy, redis.Redis(port=proxy.port, socket_timeout=5) as client:
        keys = [f"tb:{i}" for i in range(40)]
        assert client.mset({k: k for k in keys})
        assert client.mget(keys) == [k.encode() for k in keys]
        assert all(s.call("DBSIZE") for s in tls_backends)  # both backends hold keys
        with redis.Redis(port=proxy.port, socket_timeout=5) as other:
            pubsub = other.pubsub()
            pubsub.subscribe("tls:chan")
            wait_until(lambda: client.publish("tls:chan", "hi") == 1, 5, "subscribed over TLS")
            message = pubsub.get_message(timeout=5)
            while message is not None and message["type"] != "message":
                message = pubsub.get_message(timeout=5)
            assert message is not None and message["data"] == b"hi"
            pubsub.close()
            assert other.rpush("tls:q", "job") == 1
        assert client.blpop(["tls:q"], 1) == (b"tls:q", b"job")
        assert proxy.server is not None
        status = proxy.server.status()
        assert all(row["up"] for row in status["backends"]), status
        wait_until(
            lambda: all(r["acl"].startswith("allows") for r in proxy.server.status()["backends"]),  # type: ignore[union-attr]
            10,
            "the ACL check reached the backends over TLS",
        )
    assert asyncio.run(_job_ping(text)) == [b"+PONG\r\n"] * len(tls_backends)


async def _job_ping(text: str) -> list[bytes]:
    backends = open_backends(parse_config(text))
    try:
        return list(await asyncio.gather(*(b.call([b"PING"]) for b in backends.values())))
    finally:
        for backend in backends.values():
            await backend.close()


@pytest.fixture(scope="module")
def ip_less_backend(tls_ca: CA) -> Iterator[TLSRedis]:
    """A TLS backend whose certificate names redis0.test and localhost, not 127.0.0.1."""
    with tls_redis_servers(tls_ca, 1, auth_clients=False, ips=()) as servers:
        yield servers[0]


@pytest.mark.parametrize(
    ("settings", "works"),
    [
        ("{ca: CA}", False),  # the certificate does not name 127.0.0.1
        ("{ca: CA, server_name: redis0.test}", True),
        ("{ca: CA, server_name: elsewhere.test}", False),
        ("{ca: CA, verify: ca}", True),  # chain only
        ("{ca: OTHER, server_name: redis0.test}", False),  # not signed by that CA
        ("{ca: OTHER, verify: none}", True),  # no check at all
        ("true", False),  # the system's CAs do not know the test CA
    ],
)
def test_backend_certificate_checks(
    ip_less_backend: TLSRedis, tls_ca: CA, tmp_path: Path, settings: str, works: bool
) -> None:
    other = CA(tmp_path / "other", name="other CA")
    settings = settings.replace("OTHER", str(other.cert)).replace("CA", str(tls_ca.cert))
    text = backend_tls(simple_config([ip_less_backend.addr], free_port(), free_port()), settings)
    with running_proxy(text) as proxy, redis.Redis(port=proxy.port, socket_timeout=5) as client:
        if works:
            assert client.set("check:k", "v") and client.get("check:k") == b"v"
            assert (
                metric(proxy, 'shardproxy_backend_tls_handshake_failures_total{backend="s1"}') == 0
            )
            return
        with pytest.raises(redis.ResponseError, match="TLS handshake failed: certificate verify"):
            client.get("check:k")
        sample = 'shardproxy_backend_tls_handshake_failures_total{backend="s1"}'
        wait_until(lambda: metric(proxy, sample) >= 1, 5, "the failure counted")


# -- reloads -----------------------------------------------------------------------------------


def test_reload_swaps_the_certificate_and_keeps_open_connections(
    plain_backends: list[str], tls_ca: CA, proxy_cert: Issued, tmp_path: Path
) -> None:
    text = simple_config(plain_backends, free_port(), free_port(), client_tls(proxy_cert))
    context = client_context(tls_ca)
    with proxy_from_file(text, tmp_path / "proxy.yaml") as proxy:
        with tls_conn(proxy.port, context) as old:
            assert old.serial == proxy_cert.serial and old.call("SET", "swap:k", "1") == b"OK"
            renewed = tls_ca.issue("proxy", into=tmp_path / "proxy")  # same paths, new files
            assert reload(proxy) == (True, "generation 2")
            with tls_conn(proxy.port, context) as new:
                assert new.serial == renewed.serial != proxy_cert.serial
                assert new.call("GET", "swap:k") == b"1"
            assert old.call("GET", "swap:k") == b"1" and old.serial == proxy_cert.serial
            renewed.cert.write_text("not a certificate\n")  # a bad file: refused
            ok, reason = reload(proxy)
            assert not ok and reason == (
                f"client.tls.cert: cannot use {renewed.cert}: holds no PEM certificate"
            )
            with tls_conn(proxy.port, context) as after:  # the old context keeps serving
                assert after.serial == renewed.serial and after.call("PING") == b"PONG"
            assert old.call("PING") == b"PONG"
        assert metric(proxy, 'shardproxy_config_reloads_total{outcome="refused"}') == 1


def test_reload_refuses_bad_backend_files_and_port_changes(
    tls_backends: list[TLSRedis], tls_ca: CA, tmp_path: Path, proxy_cert: Issued
) -> None:
    text = tls_backend_config(tls_backends, tls_ca, client_tls(proxy_cert))
    missing = tmp_path / "gone.crt"
    refused = [
        (text.replace(str(tls_ca.cert), str(missing)), f"backend.tls.ca: cannot use {missing}"),
        (text.replace("client:\n  tls:\n", "client:\n  tls:\n    listen: 127.0.0.1:1\n"),
         "client.tls.listen cannot change on reload"),
        (re.sub(r"client:\n  tls:\n(    .*\n)+", "", text), "client.tls cannot be turned"),
    ]  # fmt: skip
    path = tmp_path / "proxy.yaml"
    with proxy_from_file(text, path) as proxy, tls_redis_py(proxy.port, tls_ca) as client:
        assert client.set("bad:k", "1")
        for bad, why in refused:
            path.write_text(bad)
            ok, reason = reload(proxy)
            assert not ok and why in reason, reason
        assert client.get("bad:k") == b"1"
        path.write_text(text)
        assert reload(proxy)[0]  # the same files again: re-read, accepted
        assert client.get("bad:k") == b"1"


def test_reload_rereads_the_backend_client_certificate(
    tls_backends: list[TLSRedis], tls_ca: CA, tmp_path: Path
) -> None:
    """Same config text, new files: new backend connections present the new client certificate
    (here one the backends do not trust, then a good one again), open ones keep theirs."""
    mine = tls_ca.issue("proxy-client", into=tmp_path / "mine")
    text = simple_config([s.addr for s in tls_backends], free_port(), free_port())
    text = text.replace("health_check_interval_ms: 200", "health_check_interval_ms: 600000")
    text = backend_tls(text, f"{{ca: {tls_ca.cert}, cert: {mine.cert}, key: {mine.key}}}")
    stranger = CA(tmp_path / "stranger", name="a CA the backends do not trust")
    path = tmp_path / "proxy.yaml"
    with (
        proxy_from_file(text, path) as proxy,
        redis.Redis(port=proxy.port, socket_timeout=5) as client,
    ):
        assert client.set("{q}k", "1") and client.rpush("{q}list", "a") == 1
        stranger.issue("proxy-client", into=tmp_path / "mine")
        assert reload(proxy)[0]
        assert client.get("{q}k") == b"1"  # the shared connection kept its certificate
        with pytest.raises(redis.ResponseError, match="unknown ca"):
            client.blpop(["{q}list"], 1)  # a new connection of its own: refused
        tls_ca.issue("proxy-client", into=tmp_path / "mine")
        assert reload(proxy)[0]
        assert client.blpop(["{q}list"], 1) == (b"{q}list", b"a")


# -- the command line and workers ----------------------------------------------------------------


def test_check_and_serve_refuse_unusable_files(tls_ca: CA, tmp_path: Path) -> None:
    cert = tls_ca.issue("cli", into=tmp_path / "cli")
    other = tls_ca.issue("cli-other", into=tmp_path / "cli-other")
    path = tmp_path / "proxy.yaml"
    base = simple_config(["127.0.0.1:7001"], free_port(), free_port())
    cases = [
        (client_tls(Issued(cert.cert, other.key, 0)), "client.tls.cert: cannot use"),
        (client_tls(Issued(tmp_path / "nope.crt", cert.key, 0)), "No such file or directory"),
        (client_tls(cert, "require_client_cert: true"), "client.tls.ca: required"),
    ]
    for extra, why in cases:
        path.write_text(base.replace("backend:\n", extra + "backend:\n"))
        for command in (["check"], ["serve"]):
            out = subprocess.run(
                [*CLI, *command, "-c", str(path)], capture_output=True, text=True, timeout=30
            )
            assert out.returncode == 2 and why in out.stderr, (command, out.stderr)
    path.write_text(base.replace("backend:\n", client_tls(cert) + "backend:\n"))
    out = subprocess.run([*CLI, "check", "-c", str(path)], capture_output=True, text=True)
    assert out.returncode == 0 and "client TLS on listen" in out.stdout, out
    out = subprocess.run([*CLI, "check", "-c", str(path), "--json"], capture_output=True, text=True)
    assert json.loads(out.stdout)["tls"] == [
        f"client TLS on listen: cert {cert.cert}, client certificates no"
    ]


def test_workers_serve_tls_and_reload_its_certificate(
    plain_backends: list[str], tls_ca: CA, proxy_cert: Issued, tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    path = tmp_path / "proxy.yaml"
    path.write_text(
        simple_config(plain_backends, port, admin, "workers: 2\n" + client_tls(proxy_cert))
    )
    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([*CLI, "serve", "-c", str(path)], stderr=err, text=True)
    context = client_context(tls_ca)
    try:
        wait_until(lambda: _serial(port, context) == proxy_cert.serial, 30, "workers serving")
        conns = [tls_redis_py(port, tls_ca) for _ in range(20)]  # over both workers
        assert all(c.set(f"w:{i}", i) for i, c in enumerate(conns))
        renewed = tls_ca.issue("proxy", into=tmp_path / "proxy")
        proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: {_serial(port, context) for _ in range(20)} == {renewed.serial},
            15,
            "every worker on the new certificate",
        )
        assert [c.get(f"w:{i}") for i, c in enumerate(conns)] == [
            str(i).encode() for i in range(20)
        ]
        for c in conns:
            c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()


def _serial(port: int, context: ssl.SSLContext) -> int:
    with tls_conn(port, context) as conn:
        return conn.serial
