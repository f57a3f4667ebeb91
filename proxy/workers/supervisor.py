"""`workers: N > 1`: the process the operator started supervises N worker processes
(proxy/workers/worker.py) that share the client listen port through SO_REUSEPORT, so the kernel
spreads connections over N event loops.

The supervisor owns what must be one per proxy: the admin port (/status and /readyz merge the
workers' reports, /metrics merges their multiprocess files), signals, --watch and reloads. A
reload is checked by every running worker, then applied by all with one generation; one refusal
refuses it everywhere. Invariants: workers run the supervisor's current config text at its
generation (reloads and (re)starts are serialized by one lock, so a restarted worker comes up on
the config the others run); a worker that exits is restarted with a backoff; no worker outlives
the supervisor. The backend user's ACL (backend.acl_check) is checked here, once for the fleet,
before any worker starts and before a reload is applied: workers never check it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from dataclasses import replace
from typing import Any

from proxy import __version__
from proxy.build_info import BUILD
from proxy.config.reader import config_hash
from proxy.config.schema import ConfigError, ProxyConfig, parse_config
from proxy.defences.report import merge_bigkeys, merge_counts, merge_hotkeys
from proxy.net.metrics import SupervisorMetrics
from proxy.server.aclcheck import (
    AclCheckError,
    AclReport,
    backend_names,
    check_config,
    log_reports,
    refusal,
)
from proxy.server.admin import AdminServer
from proxy.server.dbcheck import DatabasesError, check_databases
from proxy.server.lifecycle import ConfigFamilies, Lifecycle
from proxy.server.server import DRAIN_TIMEOUT_S
from proxy.workers.metrics_files import forget_worker
from proxy.workers.process import WorkerError, WorkerProcess, describe_exit
from proxy.workers.status import combine_reasons, merge_status
from proxy.workers.worker import StartMessage

log = logging.getLogger("shardproxy.supervisor")

RESTART_BACKOFF_S = 0.1  # first delay before restarting a worker that exited; doubles per crash
RESTART_BACKOFF_MAX_S = 5.0  # delay cap
STABLE_S = 10.0  # a worker that served this long before exiting restarts after the first delay
STOP_TIMEOUT_S = DRAIN_TIMEOUT_S + 5.0  # SIGTERM to exit, per worker; then SIGKILL


class Supervisor:
    def __init__(
        self,
        config: ProxyConfig,
        config_text: str,
        config_path: str | None,
        *,
        workers_override: int | None = None,
        watch: bool = False,
        log_format: str = "text",
        log_level: str = "info",
    ) -> None:
        self.config_path = config_path
        self.workers_override = workers_override
        self.watch = watch
        self.log_format, self.log_level = log_format, log_level
        self.generation = 1
        self.started = time.monotonic()
        self._config = config
        self._text = config_text
        self.run_dir = tempfile.mkdtemp(prefix="shardproxy-")  # 0700: sockets and metrics
        self.metrics_dir = os.path.join(self.run_dir, "metrics")
        os.mkdir(self.metrics_dir)
        self.workers = [
            WorkerProcess(i, os.path.join(self.run_dir, f"worker{i}.sock"))
            for i in range(config.workers)
        ]
        self.metrics = SupervisorMetrics(self.metrics_dir)
        self.metrics.workers.set_function(lambda: sum(w.running for w in self.workers))
        config_metrics = self.metrics.config
        families = ConfigFamilies(
            config_metrics.generation, config_metrics.reloads_total, config_metrics.info
        )
        self.lifecycle = Lifecycle(families, log)
        self._lock = asyncio.Lock()  # one reload or one worker (re)start at a time
        self._stopping = False
        self._admin: AdminServer | None = None
        self.acl_reports: dict[str, AclReport] = {}  # backend addr -> its user's last ACL check

    # -- lifecycle -------------------------------------------------------------------------
    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; 0 after a graceful stop, 1 if the workers cannot start."""
        self.install_signal_handlers()
        try:
            await self.start()
        except (WorkerError, OSError) as exc:
            log.error("cannot serve: %s", exc)
            await self.stop()
            return 1
        except (AclCheckError, DatabasesError):  # no worker started; the caller prints it
            await self.stop()
            raise
        await self.lifecycle.wait_stop()
        await self.stop()
        return 0

    async def start(self) -> None:
        """Check the backend user's ACL (refuse: AclCheckError), then start every worker."""
        await check_databases(self._config)
        acl_check = self._config.backend.acl_check
        if acl_check == "refuse":
            reason = await self.check_acl(self._config)
            if reason:
                raise AclCheckError(reason)
        log.info("starting %d workers (run dir %s)", len(self.workers), self.run_dir)
        async with self._lock:
            results = await asyncio.gather(
                *(w.spawn(self._start_message(w)) for w in self.workers), return_exceptions=True
            )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        self.lifecycle.show_config(self._config, self.generation, self.current_hash())
        admin = self._config.admin
        if admin is not None:
            self._admin = AdminServer(self, admin.host, admin.port, self._config.admin_auth)
            await self._admin.start()
        for worker in self.workers:
            self.lifecycle.spawn(self._supervise(worker))
        if acl_check == "warn":
            self.lifecycle.spawn(self.check_acl(self._config))
        if self.watch and self.config_path is not None:
            self.lifecycle.watch(self.config_path, self.current_hash, self.reload_from_file)
        pids = ", ".join(str(w.pid) for w in self.workers)
        log.info(
            "serving on %s with %d workers (pids %s), admin %s",
            self._config.listen, len(self.workers), pids, admin or "off",
        )  # fmt: skip

    def install_signal_handlers(self) -> None:
        """SIGTERM, SIGINT: stop; SIGHUP: reload the file on every worker."""
        self.lifecycle.install_signal_handlers(
            lambda: self.lifecycle.spawn(self.reload_from_file())
        )

    def request_stop(self) -> None:
        self.lifecycle.request_stop()

    async def stop(self) -> None:
        """Drain every worker (SIGTERM: they stop accepting and finish owed replies), then
        remove the run dir. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        self.lifecycle.request_stop()
        async with self._lock:  # no worker is half-started now, and none starts after this
            for worker in self.workers:
                worker.terminate()
            await asyncio.gather(*(self._reap(w) for w in self.workers if w.proc is not None))
        await self.lifecycle.cancel_tasks()
        if self._admin is not None:
            await self._admin.stop()
        for worker in self.workers:
            await worker.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        log.info("stopped")

    async def _reap(self, worker: WorkerProcess) -> None:
        try:
            await asyncio.wait_for(worker.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.error("worker %d (pid %d) did not stop in time: killed", worker.index, worker.pid)
            worker.kill()
            await worker.wait()

    def _start_message(self, worker: WorkerProcess) -> StartMessage:
        return StartMessage(
            index=worker.index,
            generation=self.generation,
            config_text=self._text,
            config_path=self.config_path,
            workers_override=self.workers_override,
            control_path=worker.control_path,
            run_dir=self.run_dir,
            metrics_dir=self.metrics_dir,
            supervisor_pid=os.getpid(),
            log_format=self.log_format,
            log_level=self.log_level,
        )

    async def _supervise(self, worker: WorkerProcess) -> None:
        """Restart the worker whenever it exits, until the supervisor stops."""
        crashes = 0  # exits in a row of a worker that served less than STABLE_S
        while True:
            code = await worker.wait()
            if self._stopping:
                return
            forget_worker(worker.pid, self.metrics_dir)
            served_s = time.monotonic() - worker.started if worker.started else 0.0
            crashes = 1 if served_s >= STABLE_S else crashes + 1
            delay_s = min(RESTART_BACKOFF_S * 2 ** (crashes - 1), RESTART_BACKOFF_MAX_S)
            worker.restarts += 1
            self.metrics.worker_restarts_total.inc()
            log.error(
                "worker %d (pid %d) exited (%s); restarting it in %.1f s",
                worker.index, worker.pid, describe_exit(code), delay_s,
            )  # fmt: skip
            if await self.lifecycle.stop_within(delay_s):
                return
            async with self._lock:
                if self._stopping:
                    return
                try:
                    await worker.spawn(self._start_message(worker))
                except WorkerError as exc:
                    log.error("%s", exc)
                    continue
            log.info("worker %d restarted (pid %d)", worker.index, worker.pid)

    # -- reload ----------------------------------------------------------------------------
    async def reload_from_file(self) -> tuple[bool, str]:
        return await self.lifecycle.reload_file(self.config_path, self.reload_text)

    async def reload_text(self, text: str) -> tuple[bool, str]:
        async with self._lock:
            if self._stopping:
                return False, "the proxy is stopping"
            try:
                config = parse_config(text, self.config_path or "<reload>")
            except ConfigError as exc:
                return self.lifecycle.refused(str(exc))
            live = [w for w in self.workers if w.running]
            if not live:
                reason = "no worker is running to check the new config; try again"
                return self.lifecycle.refused(reason)
            reasons = await asyncio.gather(*(w.check_reload(text) for w in live))
            refusals = [(w.index, r) for w, r in zip(live, reasons, strict=True) if r]
            if refusals:
                others = "the other workers accepted it; no worker changed its config"
                return self.lifecycle.refused(combine_reasons(refusals, len(live), others))
            acl = await check_config(config) if config.backend.acl_check == "refuse" else []
            if refusal(acl):
                return self.lifecycle.refused(refusal(acl))
            if self.workers_override is not None:
                config = replace(config, workers=self.workers_override)
            await self._apply_everywhere(live, config, text)
            if acl:
                self._record_acl(acl, config)
            elif config.backend.acl_check == "warn":
                self.lifecycle.spawn(self.check_acl(config))
            return True, f"generation {self.generation}"

    async def _apply_everywhere(
        self, live: list[WorkerProcess], config: ProxyConfig, text: str
    ) -> None:
        """Every live worker checked `text`: make it the supervisor's config and apply it."""
        self._config, self._text, self.generation = config, text, self.generation + 1
        if self._admin is not None:
            self._admin.auth = config.admin_auth
        applied = await asyncio.gather(*(w.apply_reload(text, self.generation) for w in live))
        for worker, (ok, message) in zip(live, applied, strict=True):
            if not ok:  # it checked the same step a moment ago: restart it on the new config
                log.error(
                    "worker %d could not apply generation %d (%s): restarting it",
                    worker.index, self.generation, message,
                )  # fmt: skip
                worker.terminate()
        where = f" on {len(live)} workers"
        self.lifecycle.accepted(config, self.generation, self.current_hash(), where)

    # -- backend ACL -----------------------------------------------------------------------
    async def check_acl(self, config: ProxyConfig) -> str:
        """Check every backend's user once for all workers (proxy/server/aclcheck.py), log what is
        wrong, record it for /status and metrics; the refusal reason ("" when none)."""
        reports = await check_config(config)
        self._record_acl(reports, config)
        return refusal(reports)

    def _record_acl(self, reports: list[AclReport], config: ProxyConfig) -> None:
        names = backend_names(config)
        log_reports(reports, names, config.backend.acl_check)
        for report in reports:
            self.acl_reports[report.addr] = report
            if report.verdict is not None:
                name = names.get(report.addr, report.addr)
                self.metrics.backend_acl_ok.labels(name).set(0 if report.failed else 1)

    def current_hash(self) -> str:
        return config_hash(self._text)

    # -- admin views -----------------------------------------------------------------------
    async def status_report(self) -> dict[str, Any]:
        reports = await asyncio.gather(*(w.status() for w in self.workers))
        migration = self._config.migration
        base = {
            "version": __version__,
            "build": BUILD,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "generation": self.generation,
            "config_hash": self.current_hash(),
            "route": self._config.route,
            "phase": migration.phase if migration else "none",
            "migration": {"to": migration.to, "phase": migration.phase} if migration else None,
        }
        status = merge_status(base, self.workers, reports)
        for row in status["backends"]:
            report = self.acl_reports.get(row["addr"])
            row["acl"] = None if report is None else report.describe()
        return status

    async def hotkeys_view(self) -> dict[str, Any]:
        reports = await asyncio.gather(*(w.status() for w in self.workers))
        rows = [r.get("hotkeys", []) for r in reports if r]
        return {"hotkeys": merge_hotkeys(rows, self._config.defences.hotkeys.top)}

    async def bigkeys_view(self) -> dict[str, Any]:
        reports = [r for r in await asyncio.gather(*(w.status() for w in self.workers)) if r]
        return {
            "threshold_bytes": self._config.defences.bigkeys.threshold_bytes,
            "counts": merge_counts(r.get("bigkey_counts", []) for r in reports),
            "bigkeys": merge_bigkeys(
                (r.get("bigkeys", []) for r in reports), self._config.defences.bigkeys.top
            ),
        }

    async def readiness_report(self) -> tuple[bool, str]:
        reports = await asyncio.gather(*(w.status() for w in self.workers))
        serving = [(w.index, r) for w, r in zip(self.workers, reports, strict=True) if r]
        if not serving:
            return False, "no worker is serving"
        unready = [(i, str(r["ready_reason"])) for i, r in serving if not r["ready"]]
        if unready:
            return False, combine_reasons(unready, len(serving))
        missing = len(self.workers) - len(serving)
        return True, "ok" if not missing else f"ok ({missing} worker(s) restarting)"
