"""The config's model: frozen dataclasses, one per section, with every default, and the tables
of legal values (phases, hashes, distributions, log formats...). proxy/config/schema.py validates
a file into it and exports it: import these names from proxy.config.schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from types import MappingProxyType
from typing import Final

from proxy.config.defences import DefencesConfig
from proxy.config.phase import Phase
from proxy.config.reader import format_addr, parse_host_port

PHASES: Final[tuple[Phase, ...]] = tuple(p for p in Phase if p is not Phase.NONE)  # in a file
# Owned here, the lowest layer that reads them; routing/ring.py maps each to its function.
HASH_NAMES: Final[tuple[str, ...]] = ("murmur3", "fnv1a_64", "md5", "crc32a", "crc32")
DISTRIBUTIONS: Final[tuple[str, ...]] = ("ketama", "modula")
LOG_FORMATS: Final[tuple[str, ...]] = ("text", "json")
# warn: log and show a too-broad backend user; refuse: fail start and reloads; off: no check.
ACL_CHECKS: Final[tuple[str, ...]] = ("warn", "refuse", "off")
LOG_LEVELS: Final[tuple[str, ...]] = ("debug", "info", "warning", "error", "critical")
MIB: Final = 1024 * 1024
MAX_DATABASES: Final = 65536  # a config's `databases` at most (Redis sets none; lanes are lazy)
MAX_WORKERS: Final = 64  # worker processes; more than cores only adds context switches
# How a backend's certificate is checked: full (chain and host name), ca (chain only), none.
TLS_VERIFY: Final[tuple[str, ...]] = ("full", "ca", "none")


@dataclass(frozen=True, slots=True)
class Address:
    host: str  # IPv4, lower-cased hostname, or IPv6 *without* brackets
    port: int  # TCP port; 0 (any free port) only where parse(allow_port_zero=True)

    def __str__(self) -> str:
        return format_addr(self.host, self.port)

    @classmethod
    def parse(cls, text: str, *, allow_port_zero: bool = False) -> Address:
        """'host:port' or '[v6]:port' -> Address; ValueError says what is wrong."""
        return cls(*parse_host_port(text, allow_port_zero))


DEFAULT_LISTEN: Final = Address("127.0.0.1", 6380)
DEFAULT_ADMIN: Final = Address("127.0.0.1", 9380)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str  # as in Address: IPv6 without brackets
    port: int  # 1..65535
    weight: int = 1  # share of the ring relative to the pool's other servers, >= 1
    name: str | None = None  # twemproxy's server name (ketama label); None: hash the address

    @property
    def addr(self) -> str:
        """'host:port' ('[v6]:port'): a backend's identity, shared across pools."""
        return format_addr(self.host, self.port)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    hash: str  # one of HASH_NAMES
    distribution: str  # one of DISTRIBUTIONS
    hash_tag: str  # "" (none) or exactly two characters, e.g. "{}"
    servers: tuple[ServerConfig, ...]  # at least one; addresses and names unique
    # TLS to this pool's servers: the pool's own `tls` over backend.tls, key by key; None: plain.
    tls: BackendTLSConfig | None = None


@dataclass(frozen=True, slots=True)
class ClientTLSConfig:
    """client.tls: the proxy serves TLS to clients. File paths are read by proxy/net/tls.py, at
    start and on every reload (a renewed certificate is picked up by the next connection)."""

    cert: str  # PEM certificate chain the proxy presents
    key: str  # PEM private key of `cert`
    ca: str | None = None  # PEM CA bundle that client certificates are checked against
    require_client_cert: bool = False  # refuse clients without a certificate signed by `ca`
    # A second port for TLS, the plain `listen` staying open (Redis's port and tls-port);
    # None: `listen` itself serves TLS only.
    listen: Address | None = None
    handshake_timeout_ms: int = 10000  # a client that has not finished its handshake is closed


@dataclass(frozen=True, slots=True)
class BackendTLSConfig:
    """backend.tls or pools.<name>.tls: the proxy connects to backends over TLS."""

    ca: str | None = None  # PEM CA bundle backends' certificates are checked against; None: system
    cert: str | None = None  # PEM client certificate (Redis's tls-auth-clients); with `key`
    key: str | None = None
    server_name: str | None = None  # SNI and the name checked; None: each server's host
    verify: str = "full"  # one of TLS_VERIFY


@dataclass(frozen=True, slots=True)
class UserConfig:
    """A client ACL user (client.users); its rules are compiled by proxy/commands/users.py."""

    name: str  # not "default" (that user is client.password's), no spaces
    password_sha256: bytes = field(repr=False)  # SHA-256 digest of the password (32 bytes)
    commands: tuple[str, ...] = ()  # Redis ACL command rules: +@read -@dangerous +get ...
    keys: tuple[str, ...] = ()  # key patterns: ~*, ~prefix*, ~exact, allkeys, resetkeys


@dataclass(frozen=True, slots=True)
class AdminAuth:
    """Who may use the admin port (admin: {addr, token, ...})."""

    token: str | None = field(default=None, repr=False)  # bearer token; None: none asked
    # With a token: GET /status and /metrics need it too (/healthz and /readyz never do).
    token_required_for_get: bool = False
    allow_insecure: bool = False  # allow a non-loopback admin address without a token


@dataclass(frozen=True, slots=True)
class ClientConfig:
    password: str | None = None  # the default user's password: clients must AUTH when set
    max_connections: int = 10000  # accepted client connections, per proxy process
    max_pending_requests: int = 10000  # per client; reading pauses beyond this
    # Per client: replies unread, queued and in flight; reading pauses at a quarter of it, and
    # requests in flight are capped at half of it; a client that holds more is closed.
    max_output_buffer_bytes: int = 64 * MIB
    # All clients together (sized for a 1 GB container): past it, the clients that hold the
    # most stop being read, and then the biggest is closed.
    max_memory_bytes: int = 768 * MIB
    idle_timeout_s: float = 0.0  # close idle clients after this; 0 = never
    max_subscriptions: int = 10000  # per client: channels, patterns and shard channels
    users: tuple[UserConfig, ...] = ()  # ACL users besides default
    # Clients accepted only from these networks; empty: from anywhere.
    allow_cidrs: tuple[IPv4Network | IPv6Network, ...] = ()
    tls: ClientTLSConfig | None = None  # None: plain text only


@dataclass(frozen=True, slots=True)
class BackendConfig:
    connect_timeout_ms: int = 1000
    command_timeout_ms: int = 2000
    username: str | None = None  # ACL user for AUTH; None: AUTH with password only
    password: str | None = None  # AUTH sent on connect when set
    connections: int = 1  # shared pipelined connections per backend per protocol
    health_check_interval_ms: int = 1000
    failure_threshold: int = 3  # consecutive failures before a backend is marked down
    retry_backoff_ms: int = 100  # first reconnect delay, doubled per failure
    retry_backoff_max_ms: int = 5000  # reconnect delay cap
    acl_check: str = "warn"  # one of ACL_CHECKS: the backend user's ACL at start and reload
    max_blocking_connections: int = 128  # per backend: clients blocked at once (BLPOP ...)
    max_watch_connections: int = 256  # dedicated WATCH connections per backend (net/transaction)
    # backend.tls as written; each pool's servers use PoolConfig.tls (this, or the pool's own).
    tls: BackendTLSConfig | None = None


@dataclass(frozen=True, slots=True)
class BackfillConfig:
    rate_keys_per_s: int = 5000  # keys examined per second, across the fleet's one runner
    batch_keys: int = 100  # keys copied per pipelined batch
    scan_count: int = 200  # COUNT hint per SCAN call
    big_key_bytes: int = 8 * MIB  # DUMP payloads above this are logged and counted


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """One prefix route: keys (and channels) starting with `prefix` belong to `pool`."""

    prefix: str  # non-empty; matched against the whole key, before any hash tag
    pool: str  # a pool name


@dataclass(frozen=True, slots=True)
class MigrationConfig:
    to: str  # target pool; never the source pool
    phase: Phase  # one of PHASES, never Phase.NONE
    force: bool = False  # allow backfill -> cut-read without a clean verify
    backfill: BackfillConfig = BackfillConfig()
    shadow_sample_ratio: float = 0.01  # share of reads shadow-compared on the other pool, 0..1
    verify_ttl_tolerance_ms: int = 2000  # TTL difference the verifier accepts
    gate_secret: str | None = field(default=None, repr=False)  # HMAC key of the gate; see gate.py
    gate_sample_keys: int = 256  # moved keys re-compared at backfill -> cut-read
    source: str | None = None  # YAML `from`: the pool being re-sharded; None: the route pool


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    listen: Address
    admin: Address | None  # None: no admin HTTP server
    workers: int  # proxy processes sharing the listen port (SO_REUSEPORT), 1..MAX_WORKERS
    log_format: str  # one of LOG_FORMATS
    log_level: str  # one of LOG_LEVELS
    slowlog_ms: float  # log requests slower than this; 0 = off
    allow_flush: bool  # FLUSHDB / FLUSHALL fan out only when true
    databases: int  # SELECT 0..databases-1, as Redis's `databases`; every backend has as many
    client: ClientConfig
    backend: BackendConfig
    pools: Mapping[str, PoolConfig]  # read-only, in file order
    route: str  # the default pool: owns every key that no prefix route claims
    migration: MigrationConfig | None
    # CONFIG SET of parameters matching these globs fans out, all or nothing; () refuses it.
    allow_config_set: tuple[str, ...] = ()
    routes: tuple[RouteConfig, ...] = ()  # prefix routes, in file order; longest prefix wins
    defences: DefencesConfig = field(default_factory=DefencesConfig)  # hot keys, big keys, ...
    admin_auth: AdminAuth = AdminAuth()  # the admin port's token and its rules

    def __post_init__(self) -> None:
        if not isinstance(self.pools, MappingProxyType):
            object.__setattr__(self, "pools", MappingProxyType(dict(self.pools)))

    @property
    def migration_source(self) -> str | None:
        """The pool a migration re-shards (migration.from, else the route pool); None: none."""
        if self.migration is None:
            return None
        return self.migration.source or self.route

    def pool(self, name: str) -> PoolConfig:
        try:
            return self.pools[name]
        except KeyError:
            raise KeyError(f"no pool named {name!r}") from None
