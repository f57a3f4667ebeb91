"""At start: every backend must have at least the config's `databases` (Redis's `databases`).

Asked with CONFIG GET databases on a fresh connection (the backend user's AUTH). A backend that
will not say (the recommended ACL denies CONFIG, or it is unreachable now) is trusted: a db it
lacks then fails the SELECT of that db's connections, and the requests for that db only get
`-ERR` naming the backend.
"""

from __future__ import annotations

import asyncio
import logging

from proxy import errors
from proxy.codec.resp import decode_reply
from proxy.config.schema import BackendConfig, ProxyConfig, ServerConfig
from proxy.net.probe import call_once
from proxy.server.aclcheck import backend_addrs

log = logging.getLogger("shardproxy.dbcheck")


class DatabasesError(Exception):
    """A backend has fewer databases than the config's `databases`: the proxy does not start."""


async def backend_databases(server: ServerConfig, cfg: BackendConfig) -> int | None:
    """The backend's `databases`, or None when it does not say (denied, down, no answer)."""
    timeout_s = cfg.connect_timeout_ms / 1000
    try:
        raw = await call_once(
            cfg, server.host, server.port, [b"CONFIG", b"GET", b"databases"], timeout_s
        )
    except OSError:
        return None
    value = decode_reply(raw) if raw is not None else None
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], bytes):
        text = value[1]
        return int(text) if text.isdigit() else None
    return None


async def check_databases(config: ProxyConfig) -> None:
    """Raise DatabasesError naming every backend with fewer databases than `config` says."""
    servers = backend_addrs(config)
    found = await asyncio.gather(*(backend_databases(s, config.backend) for s in servers))
    short = [
        (s.addr, n)
        for s, n in zip(servers, found, strict=True)
        if n is not None and n < config.databases
    ]
    unknown = [s.addr for s, n in zip(servers, found, strict=True) if n is None]
    if unknown:
        log.info(
            "databases not checked on %s (CONFIG GET refused or no answer): trusted",
            ", ".join(unknown),
        )
    if short:
        raise DatabasesError(errors.too_few_databases(config.databases, short))
