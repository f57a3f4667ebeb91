"""YAML config -> frozen, validated dataclasses: parse_config and load_config, the public face of
proxy.config (the dataclasses and value tables are defined in proxy/config/model.py and exported
from here).

Owns every validation rule. Invariant: a ProxyConfig exists only for a wholly valid file;
otherwise ConfigError lists *every* problem, each prefixed with the dotted path of the value at
fault (``pools.main.servers[2]: port must be 1..65535``). Pure: PyYAML and the standard library;
the file is read by proxy/config/reader.py (read_config_file).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from types import MappingProxyType
from typing import Any, Final

from proxy.config.access import is_loopback, read_admin, read_cidrs, read_users
from proxy.config.defences import SECTIONS as DEFENCE_SECTIONS
from proxy.config.defences import read_defences
from proxy.config.model import (
    ACL_CHECKS,
    DEFAULT_ADMIN,
    DEFAULT_LISTEN,
    DISTRIBUTIONS,
    HASH_NAMES,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_DATABASES,
    MAX_WORKERS,
    PHASES,
    TLS_VERIFY,
    Address,
    AdminAuth,
    BackendConfig,
    BackendTLSConfig,
    BackfillConfig,
    ClientConfig,
    ClientTLSConfig,
    MigrationConfig,
    PoolConfig,
    ProxyConfig,
    RouteConfig,
    ServerConfig,
    UserConfig,
)
from proxy.config.phase import Phase
from proxy.config.reader import (
    SERVER_FORM,
    Reader,
    describe,
    join_path,
    load_yaml,
    parse_server,
    read_config_file,
)
from proxy.config.routes import read_routes
from proxy.config.tls import (
    check_shared_servers,
    check_tls_listen,
    read_backend_tls,
    read_client_tls,
    read_pool_tls,
)
from proxy.errors import ConfigError

__all__ = [
    "ACL_CHECKS",
    "DEFAULT_ADMIN",
    "DEFAULT_LISTEN",
    "DISTRIBUTIONS",
    "HASH_NAMES",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_DATABASES",
    "MAX_WORKERS",
    "PHASES",
    "TLS_VERIFY",
    "Address",
    "AdminAuth",
    "BackendConfig",
    "BackendTLSConfig",
    "BackfillConfig",
    "ClientConfig",
    "ClientTLSConfig",
    "ConfigError",
    "MigrationConfig",
    "PoolConfig",
    "ProxyConfig",
    "RouteConfig",
    "ServerConfig",
    "UserConfig",
    "is_loopback",
    "load_config",
    "parse_config",
]


def parse_config(
    text: str, source: str = "<string>", env: Mapping[str, str] | None = None
) -> ProxyConfig:
    """Validate YAML text; raise ConfigError listing every problem. env defaults to os.environ."""
    raw = load_yaml(text, source)
    if raw is None:
        raise ConfigError((f"{source}: config is empty; expected a mapping with 'pools'",), source)
    if not isinstance(raw, dict):
        message = f"{source}: top level must be a mapping, got {describe(raw)}"
        raise ConfigError((message,), source)
    reader = Reader(os.environ if env is None else env)
    config = _read_config(reader, raw)
    if reader.errors:
        raise ConfigError(tuple(reader.errors), source)
    return config


def load_config(path: str, env: Mapping[str, str] | None = None) -> ProxyConfig:
    return parse_config(read_config_file(path).text, source=path, env=env)


_POOL_NAME_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")

# --- the schema: one rule per plain field, then the sections that need cross-checks ---

_Rule = Callable[[Reader, str, object, Any], Any]


def _int(low: int, high: int | None = None) -> _Rule:
    return lambda r, path, value, default: r.integer(path, value, default, low, high)


def _float(low: float, high: float | None = None) -> _Rule:
    return lambda r, path, value, default: r.number(path, value, default, low, high)


def _one_of(*choices: str) -> _Rule:
    return lambda r, path, value, default: r.choice(path, value, default, choices)


def _acl_check(r: Reader, path: str, value: object, default: Any) -> Any:
    """One of ACL_CHECKS; YAML 1.1 reads a bare `off` as false, which means off too."""
    return r.choice(path, "off" if value is False else value, default, ACL_CHECKS)


def _bool(r: Reader, path: str, value: object, default: Any) -> Any:
    return r.boolean(path, value, default)


def _globs(r: Reader, path: str, value: object, default: Any) -> Any:
    """A list of glob patterns (lowercase, as Redis's config names)."""
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        r.fail(path, f"expected a list of non-empty strings, got {describe(value)}")
        return default
    return tuple(v.lower() for v in value)


def _secret(r: Reader, path: str, value: object, default: Any) -> Any:
    return r.secret(path, value)


def _listen(r: Reader, path: str, value: object, default: Any) -> Any:
    host_port = r.address(path, value, allow_port_zero=True)
    return default if host_port is None else Address(*host_port)


def _hash_tag(r: Reader, path: str, value: object, default: Any) -> Any:
    text = "" if value is None else r.text(path, value)
    if text is None:
        return default
    if len(text) not in (0, 2):
        r.fail(path, f"must be empty or exactly 2 characters, got {text!r}")
        return default
    return text


def _defaults_of(cls: type[Any]) -> dict[str, Any]:
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


_TOP_RULES: Final[dict[str, _Rule]] = {
    "listen": _listen,
    "workers": _int(1, MAX_WORKERS),
    "log_format": _one_of(*LOG_FORMATS),
    "log_level": _one_of(*LOG_LEVELS),
    "slowlog_ms": _float(0),
    "allow_flush": _bool,
    "allow_config_set": _globs,
    "databases": _int(1, MAX_DATABASES),
}
_TOP_DEFAULTS: Final[dict[str, Any]] = {
    "listen": DEFAULT_LISTEN,
    "workers": 1,
    "log_format": "text",
    "log_level": "info",
    "slowlog_ms": 0.0,
    "allow_flush": False,
    "allow_config_set": (),
    "databases": 16,
}
_CLIENT_RULES: Final[dict[str, _Rule]] = {
    "password": _secret,
    "users": read_users,
    "allow_cidrs": read_cidrs,
    "max_connections": _int(1),
    "max_pending_requests": _int(1),
    "max_output_buffer_bytes": _int(1),
    "max_memory_bytes": _int(1),
    "idle_timeout_s": _float(0),
    "max_subscriptions": _int(1),
    "tls": lambda r, path, value, default: read_client_tls(r, path, value),
}
_BACKEND_RULES: Final[dict[str, _Rule]] = {
    "connect_timeout_ms": _int(1),
    "command_timeout_ms": _int(1),
    "username": _secret,
    "password": _secret,
    "connections": _int(1),
    "health_check_interval_ms": _int(1),
    "failure_threshold": _int(1),
    "retry_backoff_ms": _int(1),
    "retry_backoff_max_ms": _int(1),
    "acl_check": _acl_check,
    "max_blocking_connections": _int(1),
    "max_watch_connections": _int(1),
    "tls": lambda r, path, value, default: read_backend_tls(r, path, value),
}
_POOL_RULES: Final[dict[str, _Rule]] = {
    "hash": _one_of(*HASH_NAMES),
    "distribution": _one_of(*DISTRIBUTIONS),
    "hash_tag": _hash_tag,
}
_POOL_DEFAULTS: Final[dict[str, Any]] = {
    "hash": "murmur3",
    "distribution": "ketama",
    "hash_tag": "{}",
}
_SERVER_RULES: Final[dict[str, _Rule]] = {"weight": _int(1)}
_BACKFILL_RULES: Final[dict[str, _Rule]] = {
    "rate_keys_per_s": _int(1),
    "batch_keys": _int(1),
    "scan_count": _int(1),
    "big_key_bytes": _int(1),
}
_MIGRATION_RULES: Final[dict[str, _Rule]] = {
    "force": _bool,
    "shadow_sample_ratio": _float(0, 1),
    "verify_ttl_tolerance_ms": _int(0),
    "gate_secret": _secret,
    "gate_sample_keys": _int(1),
}


def _read_fields(
    r: Reader,
    path: str,
    mapping: dict[str, object],
    rules: dict[str, _Rule],
    defaults: dict[str, Any],
) -> dict[str, Any]:
    return {
        name: rule(r, join_path(path, name), mapping[name], defaults[name])
        if name in mapping
        else defaults[name]
        for name, rule in rules.items()
    }


def _read_section(
    r: Reader, path: str, raw: object, rules: dict[str, _Rule], cls: type[Any]
) -> Any:
    mapping = r.section(path, raw, tuple(rules))
    return cls(**_read_fields(r, path, mapping, rules, _defaults_of(cls)))


def _read_config(r: Reader, raw: object) -> ProxyConfig:
    sections = (
        "admin",
        "client",
        "backend",
        "pools",
        "route",
        "routes",
        "migration",
        *DEFENCE_SECTIONS,
    )
    top = r.section("", raw, (*_TOP_RULES, *sections))
    values = _read_fields(r, "", top, _TOP_RULES, _TOP_DEFAULTS)
    listen = values["listen"]
    admin, admin_auth = read_admin(r, top.get("admin", DEFAULT_ADMIN))
    if admin is not None and admin == listen and listen.port != 0:
        r.fail("admin", f"must differ from listen ({listen})")
    if values["workers"] > 1 and listen.port == 0:
        r.fail("listen", "port 0 (any free port) cannot be shared by workers > 1; give a port")
    client = _read_section(r, "client", top.get("client"), _CLIENT_RULES, ClientConfig)
    check_tls_listen(r, client.tls, listen, admin, values["workers"])
    backend = _read_backend(r, top.get("backend"))
    pools, names = _read_pools(r, top.get("pools"), backend.tls)
    route = _read_route(r, top.get("route"), names)
    return ProxyConfig(
        **values,
        admin=admin,
        admin_auth=admin_auth,
        client=client,
        backend=backend,
        pools=MappingProxyType(pools),
        route=route,
        migration=_read_migration(r, top.get("migration"), route, names),
        routes=read_routes(r, top.get("routes"), names),
        defences=read_defences(r, top),
    )


def _read_backend(r: Reader, raw: object) -> BackendConfig:
    before = len(r.errors)
    backend: BackendConfig = _read_section(r, "backend", raw, _BACKEND_RULES, BackendConfig)
    if len(r.errors) == before and backend.retry_backoff_max_ms < backend.retry_backoff_ms:
        minimum = backend.retry_backoff_ms
        r.fail("backend.retry_backoff_max_ms", f"must be >= backend.retry_backoff_ms ({minimum})")
    return backend


def _read_pools(
    r: Reader, raw: object, tls: BackendTLSConfig | None
) -> tuple[dict[str, PoolConfig], list[str]]:
    """The valid-enough pools, and every pool name given (for checking route and migration.to)."""
    mapping = r.mapping("pools", raw)
    if not mapping and (raw is None or isinstance(raw, dict)):
        r.fail("pools", "at least one pool is required")
    pools: dict[str, PoolConfig] = {}
    for name, value in mapping.items():
        path = f"pools.{name}"
        if not _POOL_NAME_RE.fullmatch(name):
            r.fail(path, "pool names may only use letters, digits, '_' and '-'")
        if value is not None and not isinstance(value, dict):
            r.fail(path, f"expected a mapping, got {describe(value)}")
            continue
        section = r.section(path, value, (*_POOL_RULES, "servers", "tls"))
        settings = _read_fields(r, path, section, _POOL_RULES, _POOL_DEFAULTS)
        servers = _read_servers(r, f"{path}.servers", section.get("servers"))
        pool_tls = read_pool_tls(r, f"{path}.tls", section, tls)
        pools[name] = PoolConfig(name=name, servers=servers, tls=pool_tls, **settings)
    check_shared_servers(r, pools)
    return pools, list(mapping)


def _read_servers(r: Reader, path: str, raw: object) -> tuple[ServerConfig, ...]:
    if raw is not None and not isinstance(raw, list):
        r.fail(path, f"expected a list, got {describe(raw)}")
        return ()
    if not raw:
        r.fail(path, "at least one server is required")
        return ()
    servers: list[ServerConfig] = []
    addrs: set[str] = set()
    names: set[str] = set()
    for index, item in enumerate(raw):
        item_path = f"{path}[{index}]"
        server = _read_server(r, item_path, item)
        if server is None:
            continue
        if server.addr in addrs:
            r.fail(item_path, f"duplicate server {server.addr}")
        if server.name is not None and server.name in names:
            r.fail(item_path, f"duplicate name {server.name!r}")
        addrs.add(server.addr)
        if server.name is not None:
            names.add(server.name)
        servers.append(server)
    return tuple(servers)


def _read_server(r: Reader, path: str, raw: object) -> ServerConfig | None:
    if isinstance(raw, dict):
        return _read_server_mapping(r, path, raw)
    if not isinstance(raw, str):
        r.fail(path, f"expected {SERVER_FORM} or a mapping, got {describe(raw)}")
        return None
    text = r.expand(path, raw)
    if text is None:
        return None
    try:
        return ServerConfig(*parse_server(text))
    except ValueError as exc:
        r.fail(path, str(exc))
        return None


def _read_server_mapping(r: Reader, path: str, raw: object) -> ServerConfig | None:
    mapping = r.section(path, raw, ("addr", "name", *_SERVER_RULES))
    weight = _read_fields(r, path, mapping, _SERVER_RULES, {"weight": 1})["weight"]
    name = None
    if mapping.get("name") is not None:
        name = r.text(f"{path}.name", mapping["name"])
        if name is not None and not re.fullmatch(r"\S+", name):
            r.fail(f"{path}.name", f"must be non-empty without spaces, got {name!r}")
    if "addr" not in mapping:
        r.fail(f"{path}.addr", "required")
        return None
    host_port = r.address(f"{path}.addr", mapping["addr"], allow_port_zero=False)
    return None if host_port is None else ServerConfig(*host_port, weight, name)


def _read_route(r: Reader, raw: object, pool_names: list[str]) -> str:
    if raw is None:
        if len(pool_names) > 1:
            r.fail("route", f"required when there is more than one pool ({_list(pool_names)})")
        return pool_names[0] if len(pool_names) == 1 else ""
    return _read_pool_name(r, "route", raw, pool_names)


def _read_pool_name(r: Reader, path: str, raw: object, pool_names: list[str]) -> str:
    name = r.text(path, raw)
    if name is None:
        return ""
    if pool_names and name not in pool_names:
        r.fail(path, f"no pool named {name!r} ({_list(pool_names)})")
    return name


def _list(pool_names: list[str]) -> str:
    return "pools: " + ", ".join(pool_names)


def _read_migration(
    r: Reader, raw: object, route: str, pool_names: list[str]
) -> MigrationConfig | None:
    if raw is None or not isinstance(raw, dict):
        r.mapping("migration", raw)  # reports a non-mapping
        return None
    allowed = ("to", "from", "phase", "backfill", *_MIGRATION_RULES)
    mapping = r.section("migration", raw, allowed)
    to, phase, source = "", Phase.NONE, None
    if mapping.get("from") is not None:
        source = _read_pool_name(r, "migration.from", mapping["from"], pool_names) or None
    if "to" not in mapping:
        r.fail("migration.to", "required")
    else:
        to = _read_pool_name(r, "migration.to", mapping["to"], pool_names)
        if to and to == (source or route):
            what = "migration.from" if source else "route"
            r.fail("migration.to", f"must name a pool other than {what} ({source or route!r})")
    if "phase" not in mapping:
        r.fail("migration.phase", "required")
    else:
        phase = Phase(r.choice("migration.phase", mapping["phase"], Phase.NONE, PHASES))
    backfill = _read_section(
        r, "migration.backfill", mapping.get("backfill"), _BACKFILL_RULES, BackfillConfig
    )
    values = _read_fields(r, "migration", mapping, _MIGRATION_RULES, _defaults_of(MigrationConfig))
    return MigrationConfig(to=to, phase=phase, backfill=backfill, source=source, **values)
