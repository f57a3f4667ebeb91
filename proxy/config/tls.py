"""The config's TLS sections: client.tls (the proxy serves TLS), backend.tls and pools.<name>.tls
(the proxy connects to backends over TLS), read and cross-checked for proxy/config/schema.py.

Only paths and settings are read here (pure); the certificate files themselves are loaded by
proxy/net/tls.py, at start and on every reload. Invariants: a pool's `tls` overrides backend.tls
key by key (`false`: plain for that pool); a server in two pools has one TLS setting; turning
verification off is never a default (backend `verify: none` must be written).
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Final

from proxy.config.model import TLS_VERIFY, Address, BackendTLSConfig, ClientTLSConfig, PoolConfig
from proxy.config.reader import Reader, describe, join_path

CLIENT_TLS_KEYS: Final = tuple(f.name for f in fields(ClientTLSConfig))
BACKEND_TLS_KEYS: Final = tuple(f.name for f in fields(BackendTLSConfig))
DEFAULT_HANDSHAKE_TIMEOUT_MS: Final = ClientTLSConfig("", "").handshake_timeout_ms


def read_client_tls(r: Reader, path: str, raw: object) -> ClientTLSConfig | None:
    """client.tls: null or false (plain), or a mapping with at least cert and key."""
    if raw is None or raw is False:
        return None
    if not isinstance(raw, dict):
        r.fail(path, f"expected a mapping (cert, key, ...) or false, got {describe(raw)}")
        return None
    m = r.section(path, raw, CLIENT_TLS_KEYS)
    cert = _file(r, path, m, "cert", required=True)
    key = _file(r, path, m, "key", required=True)
    ca = _file(r, path, m, "ca")
    require = False
    if "require_client_cert" in m:
        require = r.boolean(join_path(path, "require_client_cert"), m["require_client_cert"], False)
    if require and ca is None and "ca" not in m:
        r.fail(join_path(path, "ca"), "required when require_client_cert is true")
    listen = None
    if m.get("listen") is not None:
        host_port = r.address(join_path(path, "listen"), m["listen"], allow_port_zero=True)
        listen = None if host_port is None else Address(*host_port)
    timeout_ms = DEFAULT_HANDSHAKE_TIMEOUT_MS
    if "handshake_timeout_ms" in m:
        where = join_path(path, "handshake_timeout_ms")
        timeout_ms = r.integer(where, m["handshake_timeout_ms"], timeout_ms, 1, None)
    if cert is None or key is None:
        return None
    return ClientTLSConfig(cert, key, ca, require, listen, timeout_ms)


def read_backend_tls(
    r: Reader, path: str, raw: object, base: BackendTLSConfig | None = None
) -> BackendTLSConfig | None:
    """backend.tls or a pool's tls: false (plain), true (TLS with `base`'s settings, else the
    defaults: the system's CAs, full verification), or a mapping over those settings; null is
    plain too (a pool's null, inherit, is read_pool_tls's)."""
    if raw is None or raw is False:
        return None
    defaults = base if base is not None else BackendTLSConfig()
    if raw is True:
        return defaults
    if not isinstance(raw, dict):
        r.fail(path, f"expected a mapping (ca, cert, key, ...), true or false, got {describe(raw)}")
        return None
    m = r.section(path, raw, BACKEND_TLS_KEYS)
    settings: dict[str, Any] = {n: _file(r, path, m, n) for n in ("ca", "cert", "key") if n in m}
    if "server_name" in m:
        settings["server_name"] = _server_name(r, join_path(path, "server_name"), m["server_name"])
    if "verify" in m:
        where = join_path(path, "verify")
        settings["verify"] = r.choice(where, m["verify"], defaults.verify, TLS_VERIFY)
    tls = replace(defaults, **settings)
    if (tls.cert is None) != (tls.key is None):
        missing = "key" if tls.key is None else "cert"
        r.fail(join_path(path, missing), "required with " + ("cert" if tls.key is None else "key"))
    return tls


def read_pool_tls(
    r: Reader, path: str, section: dict[str, object], backend: BackendTLSConfig | None
) -> BackendTLSConfig | None:
    """A pool's TLS: backend.tls unless the pool says otherwise (absent or null: inherit)."""
    raw = section.get("tls")
    return backend if raw is None else read_backend_tls(r, path, raw, backend)


def check_shared_servers(r: Reader, pools: dict[str, PoolConfig]) -> None:
    """A server is one Redis, whatever pools it is in: it must have one TLS setting."""
    first: dict[str, PoolConfig] = {}
    for pool in pools.values():
        for index, server in enumerate(pool.servers):
            other = first.setdefault(server.addr, pool)
            if other is not pool and other.tls != pool.tls:
                r.fail(
                    f"pools.{pool.name}.servers[{index}]",
                    f"{server.addr} is also in pool {other.name!r} with other tls settings "
                    "(a server has one TLS setting: give both pools the same tls)",
                )


def check_tls_listen(
    r: Reader, tls: ClientTLSConfig | None, listen: Address, admin: Address | None, workers: int
) -> None:
    """client.tls.listen is a port of its own, fixed when workers share it."""
    if tls is None or tls.listen is None:
        return
    where = "client.tls.listen"
    if tls.listen.port != 0 and tls.listen in (listen, admin):
        r.fail(where, f"must differ from listen ({listen}) and admin ({admin or 'off'})")
    if workers > 1 and tls.listen.port == 0:
        r.fail(where, "port 0 (any free port) cannot be shared by workers > 1; give a port")


def _file(
    r: Reader, path: str, mapping: dict[str, object], name: str, required: bool = False
) -> str | None:
    """A file path (after ${VAR} expansion); None when absent, null or unusable."""
    where = join_path(path, name)
    value = mapping.get(name)
    if value is None:
        if required:
            r.fail(where, "required (a PEM file)")
        return None
    text = r.text(where, value)
    if text is not None and not text.strip():
        r.fail(where, "must be a file path, got an empty string")
        return None
    return text


def _server_name(r: Reader, path: str, value: object) -> str | None:
    if value is None:
        return None
    text = r.text(path, value)
    if text is not None and (not text or any(c.isspace() for c in text)):
        r.fail(path, f"must be a host name without spaces, got {text!r}")
        return None
    return text
