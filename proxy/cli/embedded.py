"""The embedded default: N local redis-server backends on free loopback ports, data in a temp
dir, and a generated config for them. Used by `shardproxy serve --local N`; stopped on exit.
A backend that dies is reaped and started again on its port (a watcher thread), never left a
zombie while the proxy reports it down. The proxy connects as a user of its own whose ACL is the
line `shardproxy acl` prints (scripts sent through the proxy cannot run what it refuses
clients); the `default` user is left as it is, for the operator."""

from __future__ import annotations

import logging
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from proxy.commands.acl import build_rules

START_TIMEOUT_S = 10.0
PROXY_USER = "shardproxy"
WATCH_INTERVAL_S = 0.5  # how often the backends are checked for one that exited

log = logging.getLogger("shardproxy.embedded")


class EmbeddedError(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command(port: int, *args: str) -> bytes:
    """One RESP request to 127.0.0.1:port; the first line of the reply."""
    payload = b"*%d\r\n" % len(args)
    payload += b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(payload)
        return sock.recv(512).split(b"\r\n", 1)[0]


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class LocalBackends:
    count: int
    listen: str = "127.0.0.1:6380"
    admin: str = "127.0.0.1:9380"
    ports: list[int] = field(default_factory=list)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _dir: str = ""
    _binary: str = ""
    password: str = field(default_factory=lambda: secrets.token_hex(16))  # the proxy's user
    _stopping: threading.Event = field(default_factory=threading.Event)
    _watcher: threading.Thread | None = None
    restarts: int = 0  # backends started again after they exited

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise EmbeddedError(
                "redis-server not found; install it (Debian: apt-get install redis-server)"
            )
        self._binary = binary
        self._dir = tempfile.mkdtemp(prefix="shardproxy-local-")
        try:
            for i in range(self.count):
                port = _free_port()
                (Path(self._dir) / f"r{i + 1}").mkdir()
                self._procs.append(self._spawn(i, port))
                self.ports.append(port)
            self._wait_ready()
            for port in self.ports:
                self._create_user(port)
        except BaseException:
            self.stop()
            raise
        self._watcher = threading.Thread(target=self._watch, name="local-backends", daemon=True)
        self._watcher.start()

    def _create_user(self, port: int) -> None:
        rules = build_rules(allow_flush=False).rules()
        reply = _command(port, "ACL", "SETUSER", PROXY_USER, "reset", f">{self.password}", *rules)
        if reply != b"+OK":
            raise EmbeddedError(f"redis-server on port {port}: ACL SETUSER: {reply.decode()}")

    def _spawn(self, index: int, port: int) -> subprocess.Popen[bytes]:
        data = Path(self._dir) / f"r{index + 1}"
        args = [self._binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(data), "--daemonize", "no"]
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def _watch(self) -> None:
        """Reap a backend that exited and start it again on its port (empty: no persistence)."""
        while not self._stopping.wait(WATCH_INTERVAL_S):
            for i, proc in enumerate(list(self._procs)):
                code = proc.poll()  # reaps it
                if code is None or self._stopping.is_set():
                    continue
                log.warning(
                    "embedded redis-server r%d (port %d) exited with %s: starting it again",
                    i + 1,
                    self.ports[i],
                    code,
                )
                self._procs[i] = self._spawn(i, self.ports[i])
                self.restarts += 1
                self._restore_user(self.ports[i])

    def _restore_user(self, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers_ping(port) and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            self._create_user(port)
        except (OSError, EmbeddedError) as exc:
            log.warning("embedded redis-server on port %d: %s", port, exc)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        for proc, port in zip(self._procs, self.ports, strict=True):
            while not _answers_ping(port):
                if proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise EmbeddedError(f"redis-server on port {port} exited: {err.strip()}")
                if time.monotonic() > deadline:
                    raise EmbeddedError(f"redis-server on port {port} did not answer PING")
                time.sleep(0.02)

    def config_text(self) -> str:
        servers = "\n".join(
            f"      - 127.0.0.1:{port}:1 r{i + 1}" for i, port in enumerate(self.ports)
        )
        return (
            "# generated by `shardproxy serve --local`\n"
            f"listen: {self.listen}\n"
            f"admin: {self.admin}\n"
            f"backend:\n  username: {PROXY_USER}\n  password: {self.password}\n"
            "pools:\n"
            "  local:\n"
            "    servers:\n"
            f"{servers}\n"
        )

    def stop(self) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(5)
            self._watcher = None
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._procs.clear()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""
