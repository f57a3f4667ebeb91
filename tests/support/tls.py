"""TLS for tests: certificate authorities and certificates made by the `openssl` command line
(EC P-256, valid two days), redis-server with TLS only (`--port 0 --tls-port P`), and clients
that talk RESP over TLS and show the certificate the server presented.

Fixtures (registered in tests/conftest.py): `tls_ca` (a CA in a session temp dir),
`tls_backends` (two TLS-only redis-server processes requiring a client certificate from
`tls_ca`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hiredis
import pytest

from tests.support.processes import REDIS_SERVER, RedisServer, free_port, wait_until

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
_SERIALS = itertools.count(0x1000)
_KEY_ARGS = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run([OPENSSL, *map(str, args)], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    serial: int


@dataclass
class CA:
    """A certificate authority in `dir`; `issue` signs certificates with it."""

    dir: Path
    name: str = "shardproxy test CA"
    cert: Path = field(init=False)
    key: Path = field(init=False)
    _client: Issued | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = self.dir / "ca.crt", self.dir / "ca.key"
        _openssl(
            "req", "-x509", *_KEY_ARGS, "-keyout", self.key, "-out", self.cert,
            "-days", "2", "-subj", f"/CN={self.name}", cwd=self.dir,
        )  # fmt: skip

    def issue(
        self,
        name: str,
        dns: tuple[str, ...] = ("localhost",),
        ips: tuple[str, ...] = ("127.0.0.1",),
        into: Path | None = None,
    ) -> Issued:
        """A certificate for CN=`name` with these subject alternative names, signed by this CA,
        written to `into` (default: `<dir>/<name>.crt` and `.key`) with a fresh serial."""
        serial = next(_SERIALS)
        base = into or self.dir / name
        cert, key = base.with_suffix(".crt"), base.with_suffix(".key")
        csr, ext = self.dir / f"{name}-{serial}.csr", self.dir / f"{name}-{serial}.ext"
        sans = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
        ext.write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
            + (f"subjectAltName={','.join(sans)}\n" if sans else "")
        )
        new_key = self.dir / f"{name}-{serial}.key"
        _openssl("req", *_KEY_ARGS, "-keyout", new_key, "-out", csr, "-subj", f"/CN={name}",
                 cwd=self.dir)  # fmt: skip
        new_cert = self.dir / f"{name}-{serial}.crt"
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
            "-set_serial", str(serial), "-days", "2", "-out", new_cert, "-extfile", ext,
            cwd=self.dir,
        )  # fmt: skip
        # Replaced by rename, as a certificate manager does: a reader never sees half a file.
        os.replace(new_key, key)
        os.replace(new_cert, cert)
        return Issued(cert, key, serial)

    def client(self) -> Issued:
        """The one client certificate of this CA's tests (made on first use)."""
        if self._client is None:
            self._client = self.issue("test-client")
        return self._client


def client_context(ca: CA, mine: Issued | None = None) -> ssl.SSLContext:
    """A client's context trusting `ca` (host name checked), with `mine` as client certificate."""
    context = ssl.create_default_context(cafile=str(ca.cert))
    if mine is not None:
        context.load_cert_chain(str(mine.cert), str(mine.key))
    return context


class TLSConn:
    """One RESP connection over TLS (blocking): requests in, decoded replies out."""

    def __init__(self, port: int, context: ssl.SSLContext, timeout_s: float = 5.0) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        try:
            self.sock = context.wrap_socket(raw, server_hostname="localhost")
        except BaseException:
            raw.close()
            raise
        self.reader = hiredis.Reader()

    @property
    def serial(self) -> int:
        """The serial number of the certificate the server presented."""
        cert = self.sock.getpeercert()
        assert cert, "no peer certificate"
        return int(str(cert["serialNumber"]), 16)

    def call(self, *args: str | bytes) -> object:
        parts = [a.encode() if isinstance(a, str) else a for a in args]
        wire = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in parts)
        self.sock.sendall(wire)
        while True:
            reply = self.reader.gets()
            if reply is not False:
                return reply
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.reader.feed(data)

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def tls_conn(port: int, context: ssl.SSLContext) -> Iterator[TLSConn]:
    conn = TLSConn(port, context)
    try:
        yield conn
    finally:
        conn.close()


@dataclass
class TLSRedis(RedisServer):
    """redis-server serving TLS only, its certificate `issued` by `ca`; `auth_clients`: it
    requires a client certificate from `ca` (Redis's tls-auth-clients yes)."""

    ca: CA | None = None
    issued: Issued | None = None
    auth_clients: bool = True

    def start(self) -> TLSRedis:
        assert self.ca is not None and self.issued is not None
        args = [
            REDIS_SERVER, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(self.issued.cert), "--tls-key-file", str(self.issued.key),
            "--tls-ca-cert-file", str(self.ca.cert),
            "--tls-auth-clients", "yes" if self.auth_clients else "no",
            "--save", "", "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
            "--protected-mode", "no", "--loglevel", "warning",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.call("PING") == b"PONG", 10, f"TLS redis on {self.port}")
        return self

    def call(self, *args: str) -> object:
        """One command as a client holding a certificate from the CA."""
        assert self.ca is not None
        with tls_conn(self.port, client_context(self.ca, self.ca.client())) as conn:
            return conn.call(*args)


@contextlib.contextmanager
def tls_redis_servers(
    ca: CA, n: int, auth_clients: bool = True, ips: tuple[str, ...] = ("127.0.0.1",)
) -> Iterator[list[TLSRedis]]:
    """`n` TLS-only redis-servers with certificates from `ca` for localhost, redis<i>.test and
    `ips`."""
    base = tempfile.mkdtemp(prefix="shardproxy-tls-")
    servers: list[TLSRedis] = []
    try:
        for i in range(n):
            issued = ca.issue(f"redis{i}", dns=("localhost", f"redis{i}.test"), ips=ips)
            os.makedirs(os.path.join(base, str(i)))
            directory = os.path.join(base, str(i))
            server = TLSRedis(
                free_port(), directory, ca=ca, issued=issued, auth_clients=auth_clients
            )
            servers.append(server.start())
        yield servers
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return CA(tmp_path_factory.mktemp("tls-ca"))


@pytest.fixture(scope="session")
def tls_backends(tls_ca: CA) -> Iterator[list[TLSRedis]]:
    """Two TLS-only redis-servers that require a client certificate from `tls_ca`."""
    with tls_redis_servers(tls_ca, 2) as servers:
        yield servers
