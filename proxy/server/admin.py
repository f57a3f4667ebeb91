"""Admin HTTP (aiohttp): /healthz, /readyz, /status (JSON), /metrics (Prometheus), POST /reload,
/hotkeys and /bigkeys (JSON, README "Protecting the cache").

Served by the proxy (ProxyServer), or with `workers: N > 1` by the supervisor for all its workers.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class MetricsView(Protocol):
    @property
    def registry(self) -> CollectorRegistry: ...


class AdminHost(Protocol):
    @property
    def metrics(self) -> MetricsView: ...

    @property
    def generation(self) -> int: ...

    async def status_report(self) -> dict[str, Any]: ...

    async def readiness_report(self) -> tuple[bool, str]: ...

    async def reload_from_file(self) -> tuple[bool, str]: ...

    async def hotkeys_view(self) -> dict[str, Any]: ...

    async def bigkeys_view(self) -> dict[str, Any]: ...


class AdminServer:
    def __init__(self, host: AdminHost, bind_host: str, port: int) -> None:
        self.host = host
        self.bind_host = bind_host
        self.port = port
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/reload", self._reload)
        app.router.add_get("/hotkeys", self._hotkeys)
        app.router.add_get("/bigkeys", self._bigkeys)
        self.app = app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.bind_host, self.port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, reason = await self.host.readiness_report()
        body = {"ready": ready, "reason": reason}
        return web.json_response(body, status=200 if ready else 503)

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(await self.host.status_report())

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.host.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _hotkeys(self, request: web.Request) -> web.Response:
        return web.json_response(await self.host.hotkeys_view())

    async def _bigkeys(self, request: web.Request) -> web.Response:
        return web.json_response(await self.host.bigkeys_view())

    async def _reload(self, request: web.Request) -> web.Response:
        ok, message = await self.host.reload_from_file()
        body = {"ok": ok, "message": message, "generation": self.host.generation}
        return web.json_response(body, status=200 if ok else 400)
