"""A worker process (`workers: N > 1`): one full ProxyServer on its own event loop, sharing the
client listen port with its siblings through SO_REUSEPORT, run by proxy/workers/supervisor.py as
`python -m proxy.workers.worker`.

Protocol with the supervisor: a StartMessage (one JSON line) on stdin; one `ready` JSON line on
stdout once the port and the control socket are up; then HTTP on a private unix socket (status,
reload check, reload apply). Invariants: a worker never binds the admin port nor reloads on its
own (SIGHUP is refused; the supervisor reloads every worker with the same text); it does not
outlive its supervisor (stdin EOF and, on Linux, the parent-death signal stop it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from aiohttp import web

from proxy.config.schema import ConfigError, parse_config
from proxy.server.logformat import setup_logging
from proxy.server.server import ProxyServer, WorkerRole
from proxy.workers.metrics_files import PUBLISH_INTERVAL_S, MetricsPublisher

log = logging.getLogger("shardproxy.worker")

PR_SET_PDEATHSIG = 1  # linux/prctl.h
ORPHAN_CHECK_S = 1.0  # after a stop by signal: how long stdin may take to say stop or EOF


@dataclass(frozen=True)
class StartMessage:
    """What a worker is told at start, one JSON line on its stdin."""

    index: int  # 0..workers-1
    generation: int  # the supervisor's config generation
    config_text: str  # the config every worker runs (the file's text when it was last accepted)
    config_path: str | None  # for messages only: a worker never reads the file
    workers_override: int | None  # serve --workers
    control_path: str  # unix socket for the supervisor's requests
    run_dir: str  # the supervisor's temp dir (control sockets, metrics_dir)
    metrics_dir: str  # where MetricsPublisher writes
    supervisor_pid: int
    log_format: str
    log_level: str

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> StartMessage:
        return cls(**json.loads(line))


def main() -> int:
    line = sys.stdin.buffer.readline()
    if not line:
        print(
            "shardproxy worker: no start message on stdin (run by the supervisor)", file=sys.stderr
        )
        return 2
    start = StartMessage.decode(line)
    if not _die_with_parent(start.supervisor_pid):
        return 1
    setup_logging(start.log_format, start.log_level, worker=start.index)
    import uvloop

    try:
        uvloop.run(_serve(start))
    except (OSError, ConfigError) as exc:  # ConfigError: a TLS file gone bad since the last load
        print(f"shardproxy worker {start.index}: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _die_with_parent(supervisor_pid: int) -> bool:
    """Ask Linux for SIGTERM when the supervisor dies; False if it is already gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return os.getppid() == supervisor_pid


async def _serve(start: StartMessage) -> None:
    config = parse_config(start.config_text, start.config_path or "<supervisor>")
    if start.workers_override is not None:
        config = replace(config, workers=start.workers_override)
    role = WorkerRole(start.index, start.generation)
    server = ProxyServer(config, start.config_text, start.config_path, role)
    server.workers_override = start.workers_override
    await server.start()
    publisher = MetricsPublisher(server.metrics.registry, start.metrics_dir, start.index == 0)
    publisher.publish()
    control = ControlServer(server, start.control_path)
    await control.start()
    _install_signal_handlers(server, start.supervisor_pid)
    link = SupervisorLink(server.request_stop)
    publishing = asyncio.get_running_loop().create_task(_publish_loop(publisher))
    sys.stdout.buffer.write(json.dumps({"ready": True, "pid": os.getpid()}).encode() + b"\n")
    sys.stdout.flush()
    os.dup2(2, 1)  # nothing else goes to the supervisor's pipe, which nobody reads any more
    try:
        await server.serve_until_stopped()
    finally:
        publishing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publishing
        _publish(publisher)  # the final counts, with no client left
        publisher.close()
        await control.stop()
        if await link.settle() == "gone":  # orphaned: nobody else will clean up
            shutil.rmtree(start.run_dir, ignore_errors=True)


def _install_signal_handlers(server: ProxyServer, supervisor_pid: int) -> None:
    """As a single proxy's, but SIGHUP is not a reload: the supervisor reloads every worker."""
    server.lifecycle.install_signal_handlers(
        lambda: log.warning(
            "SIGHUP ignored: send it to the supervisor (pid %d), which reloads every worker",
            supervisor_pid,
        )
    )


class SupervisorLink:
    """The worker's stdin, kept open by the supervisor: a `stop` line asks for an orderly stop
    (the supervisor cleans up after), EOF means the supervisor is gone (this worker cleans up).

    A stop from a signal (e.g. Linux's parent-death signal, sent as soon as the thread that
    spawned this worker exits, while the supervisor may still be dying) waits a moment for one
    of the two to tell which it was."""

    def __init__(self, on_stop: Callable[[], None]) -> None:
        self.on_stop = on_stop
        self.state = ""  # "" (nothing yet), "stop" or "gone"
        self._settled = asyncio.Event()
        asyncio.get_running_loop().add_reader(0, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if data and b"stop" not in data:
            return
        self.state = "stop" if data else "gone"
        asyncio.get_running_loop().remove_reader(0)
        self._settled.set()
        if self.state == "gone":
            log.warning("supervisor gone: stopping")
        self.on_stop()

    async def settle(self) -> str:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), ORPHAN_CHECK_S)
        return self.state


async def _publish_loop(publisher: MetricsPublisher) -> None:
    while True:
        await asyncio.sleep(PUBLISH_INTERVAL_S)
        _publish(publisher)


def _publish(publisher: MetricsPublisher) -> None:
    try:
        publisher.publish()
    except OSError as exc:  # e.g. a full disk: the supervisor's /metrics lags, serving goes on
        log.error("cannot publish metrics to the supervisor: %s", exc)


class ControlServer:
    """The supervisor's private HTTP API on a unix socket (mode 0600)."""

    def __init__(self, server: ProxyServer, path: str) -> None:
        self.server = server
        self.path = path
        app = web.Application()
        app.router.add_get("/status", self._status)
        app.router.add_post("/reload/check", self._check)
        app.router.add_post("/reload/apply", self._apply)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)  # left by this worker's previous incarnation
        await self._runner.setup()
        await web.UnixSite(self._runner, self.path).start()
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(worker_report(self.server))

    async def _check(self, request: web.Request) -> web.Response:
        reason = await self.server.check_reload(await request.text())
        return web.json_response({"reason": reason})

    async def _apply(self, request: web.Request) -> web.Response:
        body = await request.json()
        ok, message = await self.server.apply_reload(str(body["text"]), int(body["generation"]))
        return web.json_response({"ok": ok, "message": message})


def worker_report(server: ProxyServer) -> dict[str, Any]:
    """The server's /status, plus what the supervisor merges: readiness, pid and each backend's
    latency buckets (quantiles of the merged histogram are exact; averaging them would not be)."""
    status = server.status()
    for row, backend in zip(status["backends"], server.pool.backends.values(), strict=True):
        row["buckets"] = list(backend.stats.latency.buckets)
    ready, reason = server.readiness()
    status.update(pid=os.getpid(), ready=ready, ready_reason=reason)
    status["hotkeys"] = server.defences.watch.report(server.routes)
    status["bigkeys"] = server.defences.watch.big_report()
    status["bigkey_counts"] = server.defences.big_counts()
    return status


if __name__ == "__main__":
    sys.exit(main())
