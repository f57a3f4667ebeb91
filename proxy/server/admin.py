"""Admin HTTP (aiohttp): /healthz, /readyz, /status (JSON), /metrics (Prometheus), POST /reload,
/hotkeys and /bigkeys (JSON, README "Protecting the cache").

Served by the proxy (ProxyServer), or with `workers: N > 1` by the supervisor for all its workers
(workers serve no HTTP port). Every request passes `_guard` first: a request with an Origin other
than this admin port's own is refused (403: a browser page elsewhere cannot POST /reload), and
with admin.token set, POST (and with token_required_for_get every GET but /healthz and /readyz)
needs `Authorization: Bearer <token>`, compared in constant time (401 otherwise).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from proxy import errors
from proxy.config.reader import format_addr
from proxy.config.schema import AdminAuth, is_loopback

NO_AUTH = AdminAuth()  # no token: loopback, or allow_insecure
OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # probes: never need the token
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    def __init__(
        self, host: AdminHost, bind_host: str, port: int, auth: AdminAuth = NO_AUTH
    ) -> None:
        self.host = host
        self.bind_host = bind_host
        self.port = port
        self.auth = auth  # a reload replaces it
        self._runner: web.AppRunner | None = None
        app = web.Application(middlewares=[self._guard])
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

    @web.middleware
    async def _guard(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self._origins(request):
            return web.json_response({"error": errors.admin_bad_origin(origin)}, status=403)
        if self._needs_token(request) and not self._token_ok(request):
            headers = {"WWW-Authenticate": 'Bearer realm="shardproxy"'}
            body = {"error": errors.admin_unauthorized()}
            return web.json_response(body, status=401, headers=headers)
        return await handler(request)

    def _origins(self, request: web.Request) -> set[str]:
        """This admin port's own origins: its configured address, the address the request
        came in on (for 0.0.0.0 or port 0), and localhost's when bound to loopback."""
        hosts = {format_addr(self.bind_host, self.port)}
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if isinstance(sockname, tuple):
            hosts.add(format_addr(sockname[0], sockname[1]))
            if is_loopback(self.bind_host):
                hosts.add(f"localhost:{sockname[1]}")
        return {f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")}

    def _needs_token(self, request: web.Request) -> bool:
        auth = self.auth
        if auth.token is None:
            return False
        if request.method not in ("GET", "HEAD"):
            return True
        return auth.token_required_for_get and request.path not in OPEN_PATHS

    def _token_ok(self, request: web.Request) -> bool:
        token = self.auth.token or ""
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), token.encode())

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
