"""The processes a benchmark run starts: redis-server backends, nutcracker and shardproxy, each on
a free 127.0.0.1 port, and what the harness reads about them from /proc.

Invariant: a process is registered in its ProcessGroup the moment it is spawned, and the group's
`stop` ends every one of them (SIGTERM, then SIGKILL). Children run in their own session, so a
Ctrl-C reaches only the harness, which then stops them in order; on Linux each child also gets
PR_SET_PDEATHSIG, so even a harness killed with SIGKILL leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 8.0  # shardproxy drains owed replies for up to 5 s on SIGTERM
NUTCRACKER = shutil.which("nutcracker") or "/usr/sbin/nutcracker"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
BACKENDS = 3
HASH_TAG = "{}"
_PR_SET_PDEATHSIG = 1


class HarnessError(Exception):
    """A process the harness needs did not start or answer; the message says which and why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def answers_ping(port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _pdeathsig() -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to SIGKILL the child when the harness dies; None if unsure."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def set_pdeathsig() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return set_pdeathsig


@dataclass
class Proc:
    name: str  # "r1", "nutcracker", "shardproxy"
    popen: subprocess.Popen[bytes]
    port: int  # the Redis-protocol port it serves
    log_path: Path  # its stdout and stderr

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, max_bytes: int = 2000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-max_bytes:].decode(errors="replace").strip()

    def describe_exit(self) -> str:
        code = self.popen.poll()
        if code is None:
            return f"{self.name} (pid {self.pid}) is running"
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        tail = self.log_tail()
        return f"{self.name} (pid {self.pid}) ended with {how}" + (
            f"; log:\n{tail}" if tail else ""
        )


@dataclass
class ProcessGroup:
    """Every process of a run; `stop` ends them, proxies first, and is safe to call twice."""

    log_dir: Path
    procs: list[Proc] = field(default_factory=list)
    _preexec: Callable[[], None] | None = field(default_factory=_pdeathsig)

    def spawn(self, name: str, args: list[str], port: int, cwd: Path = REPO) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=self._preexec,  # safe: the harness is single-threaded
            )
        proc = Proc(name, popen, port, log_path)
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc: Proc, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not answers_ping(proc.port):
            if not proc.alive():
                raise HarnessError(f"{proc.name} did not start: {proc.describe_exit()}")
            if time.monotonic() > deadline:
                tail = proc.log_tail()
                raise HarnessError(
                    f"{proc.name} did not answer PING on port {proc.port} within {timeout_s:.0f} s"
                    + (f"; log:\n{tail}" if tail else "")
                )
            time.sleep(0.05)

    def stop_one(self, proc: Proc) -> None:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                proc.popen.terminate()
        try:
            proc.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(STOP_TIMEOUT_S)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop(self) -> None:
        for proc in reversed(self.procs):  # proxies were started last: stop them first
            if proc.alive():
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.terminate()
        for proc in list(reversed(self.procs)):
            self.stop_one(proc)


def start_backends(group: ProcessGroup, data_dir: Path, count: int = BACKENDS) -> list[Proc]:
    procs = []
    for i in range(count):
        port = free_port()
        data = data_dir / f"r{i + 1}"
        data.mkdir(parents=True, exist_ok=True)
        args = [REDIS_SERVER, "--port", str(port), "--bind", HOST, "--save", ""]
        args += ["--appendonly", "no", "--dir", str(data), "--daemonize", "no"]
        args += ["--maxclients", "4000"]
        procs.append(group.spawn(f"r{i + 1}", args, port))
    for proc in procs:
        group.wait_ready(proc)
    return procs


def _server_lines(backends: list[Proc], indent: str) -> str:
    return "\n".join(f"{indent}- {HOST}:{b.port}:1 {b.name}" for b in backends)


def nutcracker_yaml(port: int, backends: list[Proc], hash_name: str) -> str:
    return (
        "bench:\n"
        f"  listen: {HOST}:{port}\n"
        "  redis: true\n"
        f"  hash: {hash_name}\n"
        "  distribution: ketama\n"
        f'  hash_tag: "{HASH_TAG}"\n'
        "  auto_eject_hosts: false\n"
        "  timeout: 2000\n"
        "  server_connections: 1\n"
        "  servers:\n"
        f"{_server_lines(backends, '    ')}\n"
    )


def shardproxy_yaml(
    port: int, admin_port: int, backends: list[Proc], hash_name: str, workers: int = 1
) -> str:
    return (
        "# generated by benchmarks/run.py: the same pool as the nutcracker beside it\n"
        f"listen: {HOST}:{port}\n"
        f"admin: {HOST}:{admin_port}\n"
        f"workers: {workers}\n"
        "log_level: warning\n"
        "backend:\n"
        "  command_timeout_ms: 2000\n"
        "  connections: 1\n"
        "pools:\n"
        "  bench:\n"
        f"    hash: {hash_name}\n"
        "    distribution: ketama\n"
        f'    hash_tag: "{HASH_TAG}"\n'
        "    servers:\n"
        f"{_server_lines(backends, '      ')}\n"
    )


def start_nutcracker(
    group: ProcessGroup, conf_dir: Path, backends: list[Proc], hash_name: str
) -> Proc:
    port = free_port()
    conf = conf_dir / "nutcracker.yml"
    conf.write_text(nutcracker_yaml(port, backends, hash_name), encoding="utf-8")
    args = [NUTCRACKER, "-c", str(conf), "-a", HOST, "-s", str(free_port())]
    args += ["-p", str(conf_dir / "nutcracker.pid")]
    proc = group.spawn("nutcracker", args, port)
    group.wait_ready(proc)
    return proc


def start_shardproxy(
    group: ProcessGroup,
    conf_dir: Path,
    backends: list[Proc],
    hash_name: str,
    source: Path = REPO,
    workers: int = 1,
) -> Proc:
    """`python -m proxy serve` run from `source`, the directory holding the proxy/ package;
    with workers > 1, ready once every worker process runs (the first answers PING sooner)."""
    port = free_port()
    conf = conf_dir / "shardproxy.yaml"
    text = shardproxy_yaml(port, free_port(), backends, hash_name, workers)
    conf.write_text(text, encoding="utf-8")
    args = [sys.executable, "-m", "proxy", "serve", "-c", str(conf)]
    proc = group.spawn("shardproxy", args, port, cwd=source)
    group.wait_ready(proc)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while workers > 1 and len(process_tree(proc.pid)) < 1 + workers:
        if time.monotonic() > deadline or not proc.alive():
            raise HarnessError(f"shardproxy did not start {workers} workers: {proc.log_tail()}")
        time.sleep(0.05)
    return proc


def export_source(rev: str, dest: Path) -> Path:
    """proxy/ as of git revision `rev`, extracted under `dest`; returns `dest`."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", rev, "proxy"],
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
    except subprocess.CalledProcessError as exc:
        raise HarnessError(f"git archive {rev}: {exc.stderr.decode(errors='replace')}") from None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a supervisor and its workers), from /proc's children lists."""
    pids = [pid]
    for parent in pids:  # grows while it is walked: breadth first
        for children in glob.glob(f"/proc/{parent}/task/*/children"):
            try:
                with open(children, encoding="ascii") as f:
                    pids += [int(p) for p in f.read().split()]
            except OSError:
                continue  # the thread or process is gone
    return pids


def proc_status_kib(pid: int, tree: bool = False) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB; {} once it is gone. With `tree`, summed
    over the process and its descendants (VmHWM then adds peaks that need not coincide)."""
    out: dict[str, int] = {}
    for one in process_tree(pid) if tree else [pid]:
        try:
            with open(f"/proc/{one}/status", encoding="ascii") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in ("VmRSS", "VmHWM"):
                        out[key] = out.get(key, 0) + int(value.split()[0])
        except OSError:
            if one == pid:
                return {}
    return out


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, tree: bool = False) -> float | None:
    """User plus system CPU time a process has used, in seconds; None once it is gone. With
    `tree`, summed over the process and its live descendants."""
    total = 0
    for one in process_tree(pid) if tree else [pid]:
        try:
            with open(f"/proc/{one}/stat", encoding="ascii") as f:
                stat = f.read()
        except OSError:
            if one == pid:
                return None
            continue
        fields = stat.rpartition(")")[2].split()  # after "pid (comm)": state is fields[0]
        total += int(fields[11]) + int(fields[12])
    return total / _CLK_TCK
