"""proxy.config.schema: defaults, every validation message (exact), error collection, env
expansion, server forms, addresses, migration rules, immutability, and the files shipped
in config/."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml

from proxy.config.defences import SECTIONS as DEFENCE_SECTIONS
from proxy.config.defences import BigKeysConfig, CoalesceConfig, HotCacheConfig, HotKeysConfig
from proxy.config.reader import config_hash, read_config_file
from proxy.config.schema import (
    DEFAULT_ADMIN,
    DEFAULT_LISTEN,
    PHASES,
    Address,
    AdminAuth,
    BackendConfig,
    BackfillConfig,
    ClientConfig,
    MigrationConfig,
    PoolConfig,
    ProxyConfig,
    RouteConfig,
    ServerConfig,
    load_config,
    parse_config,
)
from proxy.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"
MINIMAL = "pools: {p: {servers: ['127.0.0.1:7001']}}"
TWO_POOLS = """
pools:
  old: {servers: ['127.0.0.1:7001', '127.0.0.1:7002']}
  new: {servers: ['127.0.0.1:7001', '127.0.0.1:7002', '127.0.0.1:7003']}
"""
NO_ENV: dict[str, str] = {}


def parse(text: str, env: dict[str, str] | None = None) -> ProxyConfig:
    return parse_config(text, env=NO_ENV if env is None else env)


def errors_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return list(info.value.errors)


def error_of(text: str, env: dict[str, str] | None = None) -> str:
    errors = errors_of(text, env)
    assert len(errors) == 1, errors
    return errors[0]


def with_pool(extra: str) -> str:
    """MINIMAL plus top-level YAML."""
    return MINIMAL + "\n" + extra


def server_error(item: str) -> str:
    return error_of(f"pools: {{p: {{servers: [{item}]}}}}")


# --- defaults ---


def test_every_default() -> None:
    config = parse(MINIMAL)
    assert config.listen == Address("127.0.0.1", 6380) == DEFAULT_LISTEN
    assert config.admin == Address("127.0.0.1", 9380) == DEFAULT_ADMIN
    assert config.workers == 1
    assert config.databases == 16  # Redis's default
    assert config.log_format == "text"
    assert config.log_level == "info"
    assert config.slowlog_ms == 0
    assert config.allow_flush is False
    assert config.client == ClientConfig(
        password=None,
        max_connections=10000,
        max_pending_requests=10000,
        max_output_buffer_bytes=64 * 1024 * 1024,
        max_memory_bytes=768 * 1024 * 1024,
        idle_timeout_s=0.0,
    )
    assert config.backend == BackendConfig(
        connect_timeout_ms=1000,
        command_timeout_ms=2000,
        username=None,
        password=None,
        connections=1,
        health_check_interval_ms=1000,
        failure_threshold=3,
        retry_backoff_ms=100,
        retry_backoff_max_ms=5000,
    )
    assert config.pools == {
        "p": PoolConfig(
            name="p",
            hash="murmur3",
            distribution="ketama",
            hash_tag="{}",
            servers=(ServerConfig(host="127.0.0.1", port=7001, weight=1, name=None),),
        )
    }
    assert config.route == "p"
    assert config.migration is None


def test_migration_defaults() -> None:
    config = parse(TWO_POOLS + "route: old\nmigration: {to: new, phase: double-write}")
    assert config.migration == MigrationConfig(
        to="new",
        phase="double-write",
        force=False,
        backfill=BackfillConfig(
            rate_keys_per_s=5000, batch_keys=100, scan_count=200, big_key_bytes=8 * 1024 * 1024
        ),
        shadow_sample_ratio=0.01,
        verify_ttl_tolerance_ms=2000,
    )


def test_phases() -> None:
    assert PHASES == ("double-write", "backfill", "cut-read", "retire")


def test_null_sections_read_as_defaults() -> None:
    config = parse(with_pool("client:\nbackend:\n"))
    assert config.client == ClientConfig()
    assert config.backend == BackendConfig()


def test_every_setting_is_read() -> None:
    config = parse(
        """
listen: 0.0.0.0:7000
admin: "[::1]:0"
workers: 4
log_format: json
log_level: debug
slowlog_ms: 2.5
allow_flush: true
client: {password: s3cret, max_connections: 5, max_pending_requests: 6,
         max_output_buffer_bytes: 7, max_memory_bytes: 9, idle_timeout_s: 1.5}
backend: {connect_timeout_ms: 10, command_timeout_ms: 20, username: u, password: pw,
          connections: 2, health_check_interval_ms: 30, failure_threshold: 4,
          retry_backoff_ms: 40, retry_backoff_max_ms: 50, max_blocking_connections: 60}
pools:
  old: {hash: md5, distribution: modula, hash_tag: "", servers: ['127.0.0.1:1']}
  new: {hash: fnv1a_64, hash_tag: "<>", servers: ['127.0.0.1:1', '127.0.0.1:2']}
route: old
migration:
  to: new
  phase: cut-read
  force: true
  backfill: {rate_keys_per_s: 1, batch_keys: 2, scan_count: 3, big_key_bytes: 4}
  shadow_sample_ratio: 1
  verify_ttl_tolerance_ms: 0
"""
    )
    assert (config.listen, config.admin) == (Address("0.0.0.0", 7000), Address("::1", 0))
    assert (config.workers, config.log_format, config.log_level) == (4, "json", "debug")
    assert (config.slowlog_ms, config.allow_flush) == (2.5, True)
    assert config.client == ClientConfig("s3cret", 5, 6, 7, 9, 1.5)
    assert config.backend == BackendConfig(
        10, 20, "u", "pw", 2, 30, 4, 40, 50, max_blocking_connections=60
    )
    old, new = config.pool("old"), config.pool("new")
    assert (old.hash, old.distribution, old.hash_tag) == ("md5", "modula", "")
    assert (new.hash, new.distribution, new.hash_tag) == ("fnv1a_64", "ketama", "<>")
    assert config.migration == MigrationConfig(
        "new", "cut-read", True, BackfillConfig(1, 2, 3, 4), 1.0, 0
    )


def test_admin_null_disables() -> None:
    assert parse(with_pool("admin: null")).admin is None


# --- whole-file problems ---


def test_empty_file() -> None:
    assert error_of("") == "<string>: config is empty; expected a mapping with 'pools'"
    assert error_of("# only a comment\n") == (
        "<string>: config is empty; expected a mapping with 'pools'"
    )


def test_top_level_not_a_mapping() -> None:
    assert error_of("- a\n- b") == "<string>: top level must be a mapping, got a list"
    assert error_of("just text") == "<string>: top level must be a mapping, got 'just text'"


def test_bad_yaml_is_one_error_with_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("pools:\n  p: [a\n", source="proxy.yaml", env=NO_ENV)
    assert info.value.errors == (
        "proxy.yaml:3:1: invalid YAML: expected ',' or ']', but got '<stream end>'",
    )
    assert info.value.source == "proxy.yaml"


def test_bad_yaml_indentation() -> None:
    assert (
        error_of("a: 1\n b: 2") == "<string>:2:3: invalid YAML: mapping values are not allowed here"
    )


def test_pools_required() -> None:
    assert error_of("listen: 127.0.0.1:6380") == "pools: at least one pool is required"
    assert error_of("pools: {}") == "pools: at least one pool is required"
    assert error_of("pools:") == "pools: at least one pool is required"
    assert error_of("pools: [a]") == "pools: expected a mapping, got a list"


# --- keys ---


def test_unknown_keys_everywhere() -> None:
    errors = errors_of(
        TWO_POOLS.replace("old: {", "old: {colour: red, ")
        + """
foo: 1
client: {max_conns: 1}
backend: {timeout: 1}
route: old
migration: {to: new, phase: backfill, speed: 1, backfill: {rate: 1}}
"""
    )
    assert errors == [
        "foo: unknown key",
        "client.max_conns: unknown key",
        "backend.timeout: unknown key",
        "pools.old.colour: unknown key",
        "migration.speed: unknown key",
        "migration.backfill.rate: unknown key",
    ]


def test_unknown_key_in_server_mapping() -> None:
    assert server_error("{addr: '127.0.0.1:1', port: 2}") == "pools.p.servers[0].port: unknown key"


def test_duplicate_yaml_keys() -> None:
    assert error_of(with_pool("workers: 2\nworkers: 3")) == (
        "workers: duplicate key (again at line 3)"
    )


def test_yaml_merge_keys_are_not_duplicates() -> None:
    config = parse(
        """
pools:
  a: &pool {hash: md5, servers: ['127.0.0.1:1']}
  b:
    <<: *pool
    hash: fnv1a_64
route: a
"""
    )
    assert config.pool("b").hash == "fnv1a_64"
    assert config.pool("b").servers == config.pool("a").servers


def test_non_string_keys() -> None:
    assert error_of(with_pool("client: {1: 2}")) == "client: keys must be strings, got 1"
    assert error_of("pools: {p: {servers: ['127.0.0.1:1']}}\n5: x") == (
        "<top level>: keys must be strings, got 5"
    )


# --- scalar types ---


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("workers: abc", "workers: expected an integer, got 'abc'"),
        ("workers: 1.5", "workers: expected an integer, got 1.5"),
        ("workers: true", "workers: expected an integer, got true"),
        ("workers: null", "workers: expected an integer, got null"),
        ("workers: [1]", "workers: expected an integer, got a list"),
        ("workers: 0", "workers: must be 1..64"),
        ("workers: -2", "workers: must be 1..64"),
        ("workers: 65", "workers: must be 1..64"),
        ("databases: 0", "databases: must be 1..65536"),
        ("databases: 65537", "databases: must be 1..65536"),
        ("databases: many", "databases: expected an integer, got 'many'"),
        (
            "listen: 127.0.0.1:0\nworkers: 2",
            "listen: port 0 (any free port) cannot be shared by workers > 1; give a port",
        ),
        (
            "client: {max_connections: abc}",
            "client.max_connections: expected an integer, got 'abc'",
        ),
        ("client: {max_connections: 0}", "client.max_connections: must be >= 1"),
        ("client: {max_pending_requests: 0}", "client.max_pending_requests: must be >= 1"),
        ("client: {max_output_buffer_bytes: 0}", "client.max_output_buffer_bytes: must be >= 1"),
        ("client: {idle_timeout_s: -1}", "client.idle_timeout_s: must be >= 0"),
        ("client: {idle_timeout_s: x}", "client.idle_timeout_s: expected a number, got 'x'"),
        (
            "client: {idle_timeout_s: .inf}",
            "client.idle_timeout_s: expected a finite number, got inf",
        ),
        (
            "client: {password: 1234}",
            "client.password: expected a string (quote it so YAML keeps it verbatim)",
        ),
        ("client: []", "client: expected a mapping, got a list"),
        ("backend: {connect_timeout_ms: 0}", "backend.connect_timeout_ms: must be >= 1"),
        ("backend: {command_timeout_ms: 0}", "backend.command_timeout_ms: must be >= 1"),
        ("backend: {connections: 0}", "backend.connections: must be >= 1"),
        (
            "backend: {health_check_interval_ms: 0}",
            "backend.health_check_interval_ms: must be >= 1",
        ),
        ("backend: {failure_threshold: 0}", "backend.failure_threshold: must be >= 1"),
        ("backend: {retry_backoff_ms: 0}", "backend.retry_backoff_ms: must be >= 1"),
        ("backend: {retry_backoff_max_ms: 0}", "backend.retry_backoff_max_ms: must be >= 1"),
        (
            "backend: {retry_backoff_ms: 200, retry_backoff_max_ms: 100}",
            "backend.retry_backoff_max_ms: must be >= backend.retry_backoff_ms (200)",
        ),
        (
            "backend: {username: [a]}",
            "backend.username: expected a string (quote it so YAML keeps it verbatim)",
        ),
        ("backend: 5", "backend: expected a mapping, got 5"),
        ("log_format: xml", "log_format: must be one of text, json, got 'xml'"),
        (
            "log_level: INFO",
            "log_level: must be one of debug, info, warning, error, critical, got 'INFO'",
        ),
        ("log_level: 3", "log_level: expected a string, got 3"),
        ("slowlog_ms: -1", "slowlog_ms: must be >= 0"),
        ("allow_flush: 'true'", "allow_flush: expected a boolean (true or false), got 'true'"),
        ("allow_flush: 1", "allow_flush: expected a boolean (true or false), got 1"),
        ("listen: 6380", 'listen: expected "host:port", got 6380'),
        ("listen: localhost", "listen: expected \"host:port\", got 'localhost'"),
        ("listen: 127.0.0.1:70000", "listen: port must be 0..65535"),
        ("listen: '127.0.0.1:'", "listen: port must be a number, got ''"),
        ("listen: ':6380'", "listen: missing host"),
        (
            "listen: '::1:6380'",
            "listen: IPv6 addresses need brackets, e.g. [::1]:6380, got '::1:6380'",
        ),
        ("listen: 'a b:1'", "listen: invalid host 'a b'"),
        ("admin: 127.0.0.1:6380", "admin: must differ from listen (127.0.0.1:6380)"),
    ],
)
def test_scalar_errors(line: str, message: str) -> None:
    assert error_of(with_pool(line)) == message


def test_numbers_as_strings() -> None:
    config = parse(with_pool("workers: '3'\nslowlog_ms: '1.5'\nclient: {max_connections: ' 7 '}"))
    assert (config.workers, config.slowlog_ms, config.client.max_connections) == (3, 1.5, 7)


def test_yaml_booleans() -> None:
    assert parse(with_pool("allow_flush: true")).allow_flush is True
    assert parse(with_pool("allow_flush: false")).allow_flush is False


def test_empty_secret_means_unset() -> None:
    config = parse(with_pool("client: {password: ''}\nbackend: {username: '', password: x}"))
    assert (config.client.password, config.backend.username, config.backend.password) == (
        None,
        None,
        "x",
    )


# --- environment expansion ---


def test_env_expansion_everywhere() -> None:
    env = {"PW": "hunter2", "PORT": "7005", "HOST": "10.0.0.1", "POOL": "main", "N": "4"}
    config = parse(
        """
listen: ${HOST}:${PORT}
workers: ${N}
client:
  password: ${PW}
pools:
  main: {servers: ['${HOST}:7001:2 r1', {addr: '${HOST}:${PORT}', weight: '${N}'}]}
route: ${POOL}
""",
        env,
    )
    assert config.listen == Address("10.0.0.1", 7005)
    assert config.workers == 4
    assert config.client.password == "hunter2"
    assert config.pool("main").servers == (
        ServerConfig("10.0.0.1", 7001, 2, "r1"),
        ServerConfig("10.0.0.1", 7005, 4, None),
    )
    assert config.route == "main"


def test_env_defaults() -> None:
    text = with_pool("client: {password: '${PW:-fallback}'}\nworkers: '${W:-2}'")
    config = parse(text)
    assert (config.client.password, config.workers) == ("fallback", 2)
    config = parse(text, {"PW": "set", "W": "5"})
    assert (config.client.password, config.workers) == ("set", 5)
    assert (
        parse(text, {"PW": ""}).client.password == "fallback"
    )  # as in the shell: empty -> default
    assert parse(with_pool("client: {password: '${PW:-}'}")).client.password is None


def test_env_unset_is_an_error_with_its_path() -> None:
    text = "pools: {p: {servers: ['127.0.0.1:7001']}}\nclient:\n  password: ${SHARDPROXY_PASSWORD}"
    assert error_of(text) == "client.password: environment variable SHARDPROXY_PASSWORD is not set"


def test_env_unset_reports_each_variable_once_and_nothing_else() -> None:
    errors = errors_of(with_pool("listen: ${H}:${P}\nworkers: ${W}"))
    assert errors == [
        "listen: environment variable H is not set",
        "listen: environment variable P is not set",
        "workers: environment variable W is not set",
    ]
    assert server_error("'${SERVER}'") == (
        "pools.p.servers[0]: environment variable SERVER is not set"
    )


def test_env_expansion_is_single_pass_and_escapable() -> None:
    config = parse(with_pool("client: {password: '$${NOT_A_VAR}-${A}'}"), {"A": "${B}"})
    assert config.client.password == "${NOT_A_VAR}-${B}"


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDPROXY_TEST_PW", "from-os")
    config = parse_config(with_pool("client: {password: '${SHARDPROXY_TEST_PW}'}"))
    assert config.client.password == "from-os"


# --- servers ---


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("'127.0.0.1:7001'", ServerConfig("127.0.0.1", 7001, 1, None)),
        ("'127.0.0.1:7001:3'", ServerConfig("127.0.0.1", 7001, 3, None)),
        ("'127.0.0.1:7001:3 r1'", ServerConfig("127.0.0.1", 7001, 3, "r1")),
        ("'127.0.0.1:7001 r1'", ServerConfig("127.0.0.1", 7001, 1, "r1")),
        ("'localhost:7001'", ServerConfig("localhost", 7001, 1, None)),
        ("'Redis-1.Example.com:7001'", ServerConfig("redis-1.example.com", 7001, 1, None)),
        ("'redis_1:7001'", ServerConfig("redis_1", 7001, 1, None)),
        ("'[::1]:7001:2 v6'", ServerConfig("::1", 7001, 2, "v6")),
        ("'[0:0::1]:7001'", ServerConfig("::1", 7001, 1, None)),
        ("{addr: '127.0.0.1:7001'}", ServerConfig("127.0.0.1", 7001, 1, None)),
        ("{addr: '127.0.0.1:7001', weight: 2, name: r1}", ServerConfig("127.0.0.1", 7001, 2, "r1")),
        ("{addr: '[::1]:7001', name: null}", ServerConfig("::1", 7001, 1, None)),
    ],
)
def test_server_forms(item: str, expected: ServerConfig) -> None:
    config = parse(f"pools: {{p: {{servers: [{item}]}}}}")
    assert config.pool("p").servers == (expected,)


def test_server_addr() -> None:
    assert ServerConfig("127.0.0.1", 7001).addr == "127.0.0.1:7001"
    assert ServerConfig("::1", 7001).addr == "[::1]:7001"


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("'127.0.0.1:70000'", "port must be 1..65535"),
        ("'127.0.0.1:0'", "port must be 1..65535"),
        ("'127.0.0.1:x'", "port must be a number, got 'x'"),
        ("'127.0.0.1:7001:0'", "weight must be >= 1"),
        ("'127.0.0.1:7001:-1'", "weight must be >= 1"),
        ("'127.0.0.1:7001:w'", "weight must be an integer, got 'w'"),
        ("'127.0.0.1'", "expected \"host:port[:weight] [name]\", got '127.0.0.1'"),
        ("'a:1:2:3'", "IPv6 addresses need brackets, e.g. [::1]:6380, got 'a:1:2:3'"),
        ("'::1:7001'", "IPv6 addresses need brackets, e.g. [::1]:6380, got '::1:7001'"),
        ("'[::1]'", "expected \"host:port[:weight] [name]\", got '[::1]'"),
        ("'[::g]:1'", "invalid IPv6 address '[::g]'"),
        ("'300.1.1.1:1'", "invalid IPv4 address '300.1.1.1'"),
        ("'-bad-:1'", "invalid host '-bad-'"),
        ("':1'", "missing host"),
        ("'h:1:1 a b'", "expected \"host:port[:weight] [name]\", got 'h:1:1 a b'"),
        ("7001", 'expected "host:port[:weight] [name]" or a mapping, got 7001'),
        ("null", 'expected "host:port[:weight] [name]" or a mapping, got null'),
    ],
)
def test_short_form_errors(item: str, message: str) -> None:
    assert server_error(item) == f"pools.p.servers[0]: {message}"


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("{weight: 1}", "pools.p.servers[0].addr: required"),
        ("{addr: 7001}", 'pools.p.servers[0].addr: expected "host:port", got 7001'),
        ("{addr: 'h:0'}", "pools.p.servers[0].addr: port must be 1..65535"),
        ("{addr: 'h:1', weight: 0}", "pools.p.servers[0].weight: must be >= 1"),
        ("{addr: 'h:1', weight: x}", "pools.p.servers[0].weight: expected an integer, got 'x'"),
        ("{addr: 'h:1', name: 5}", "pools.p.servers[0].name: expected a string, got 5"),
        (
            "{addr: 'h:1', name: 'a b'}",
            "pools.p.servers[0].name: must be non-empty without spaces, got 'a b'",
        ),
        (
            "{addr: 'h:1', name: ''}",
            "pools.p.servers[0].name: must be non-empty without spaces, got ''",
        ),
    ],
)
def test_long_form_errors(item: str, message: str) -> None:
    assert server_error(item) == message


def test_duplicate_server_address() -> None:
    text = "pools: {old: {servers: ['127.0.0.1:7001', '127.0.0.1:7001:2 r2']}}"
    assert error_of(text) == "pools.old.servers[1]: duplicate server 127.0.0.1:7001"


def test_duplicate_address_across_forms_and_spellings() -> None:
    text = (
        "pools: {p: {servers: ['[::1]:7001', {addr: '[0::1]:7001'}, 'LocalHost:1', 'localhost:1']}}"
    )
    assert errors_of(text) == [
        "pools.p.servers[1]: duplicate server [::1]:7001",
        "pools.p.servers[3]: duplicate server localhost:1",
    ]


def test_duplicate_server_name() -> None:
    servers = "['127.0.0.1:7001:1 r1', '127.0.0.1:7002:1 r2', {addr: '127.0.0.1:7003', name: r1}]"
    text = f"pools: {{old: {{servers: {servers}}}}}"
    assert error_of(text) == "pools.old.servers[2]: duplicate name 'r1'"


def test_same_address_in_two_pools_is_allowed() -> None:
    config = parse(TWO_POOLS + "route: old")
    assert config.pool("old").servers[0] == config.pool("new").servers[0]


def test_pool_needs_servers() -> None:
    assert error_of("pools: {p: {}}") == "pools.p.servers: at least one server is required"
    assert error_of("pools: {p: }") == "pools.p.servers: at least one server is required"
    assert (
        error_of("pools: {p: {servers: []}}") == "pools.p.servers: at least one server is required"
    )
    assert error_of("pools: {p: {servers: 'h:1'}}") == "pools.p.servers: expected a list, got 'h:1'"
    assert error_of("pools: {p: [1]}") == "pools.p: expected a mapping, got a list"


def test_pool_name_charset() -> None:
    assert error_of("pools: {'a.b': {servers: ['h:1']}}") == (
        "pools.a.b: pool names may only use letters, digits, '_' and '-'"
    )


# --- pool settings ---


@pytest.mark.parametrize("tag", ["{}", "[]", "::", ""])
def test_hash_tag_accepted(tag: str) -> None:
    config = parse(f"pools: {{p: {{hash_tag: '{tag}', servers: ['h:1']}}}}")
    assert config.pool("p").hash_tag == tag


def test_hash_tag_null_means_none() -> None:
    assert parse("pools: {p: {hash_tag: null, servers: ['h:1']}}").pool("p").hash_tag == ""


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        ("'{'", "pools.p.hash_tag: must be empty or exactly 2 characters, got '{'"),
        ("'{{}}'", "pools.p.hash_tag: must be empty or exactly 2 characters, got '{{}}'"),
        ("5", "pools.p.hash_tag: expected a string, got 5"),
    ],
)
def test_hash_tag_rejected(tag: str, message: str) -> None:
    assert error_of(f"pools: {{p: {{hash_tag: {tag}, servers: ['h:1']}}}}") == message


def test_hash_and_distribution_choices() -> None:
    errors = errors_of("pools: {p: {hash: crc16, distribution: random, servers: ['h:1']}}")
    assert errors == [
        "pools.p.hash: must be one of murmur3, fnv1a_64, md5, crc32a, crc32, got 'crc16'",
        "pools.p.distribution: must be one of ketama, modula, got 'random'",
    ]


# --- route ---


def test_route_defaults_to_the_only_pool() -> None:
    assert parse(MINIMAL).route == "p"


def test_route_required_with_several_pools() -> None:
    assert (
        error_of(TWO_POOLS) == "route: required when there is more than one pool (pools: old, new)"
    )


def test_route_must_name_a_pool() -> None:
    assert error_of(TWO_POOLS + "route: x") == "route: no pool named 'x' (pools: old, new)"
    assert error_of(MINIMAL + "\nroute: x") == "route: no pool named 'x' (pools: p)"
    assert error_of(MINIMAL + "\nroute: [p]") == "route: expected a string, got a list"


def test_route_may_name_a_pool_that_has_errors() -> None:
    assert errors_of("pools: {p: {servers: []}}\nroute: p") == [
        "pools.p.servers: at least one server is required"
    ]


# --- migration ---


def test_migration_errors() -> None:
    base = TWO_POOLS + "route: old\n"
    assert error_of(base + "migration: {to: nw, phase: backfill}") == (
        "migration.to: no pool named 'nw' (pools: old, new)"
    )
    assert error_of(base + "migration: {to: old, phase: backfill}") == (
        "migration.to: must name a pool other than route ('old')"
    )
    assert error_of(base + "migration: {to: new, phase: done}") == (
        "migration.phase: must be one of double-write, backfill, cut-read, retire, got 'done'"
    )
    assert errors_of(base + "migration: {}") == [
        "migration.to: required",
        "migration.phase: required",
    ]
    assert error_of(base + "migration: [1]") == "migration: expected a mapping, got a list"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("force: 'yes'", "migration.force: expected a boolean (true or false), got 'yes'"),
        ("shadow_sample_ratio: 1.5", "migration.shadow_sample_ratio: must be 0..1"),
        ("shadow_sample_ratio: -0.1", "migration.shadow_sample_ratio: must be 0..1"),
        ("verify_ttl_tolerance_ms: -1", "migration.verify_ttl_tolerance_ms: must be >= 0"),
        ("backfill: {rate_keys_per_s: 0}", "migration.backfill.rate_keys_per_s: must be >= 1"),
        ("backfill: {batch_keys: 0}", "migration.backfill.batch_keys: must be >= 1"),
        ("backfill: {scan_count: 0}", "migration.backfill.scan_count: must be >= 1"),
        ("backfill: {big_key_bytes: 0}", "migration.backfill.big_key_bytes: must be >= 1"),
        ("backfill: 1", "migration.backfill: expected a mapping, got 1"),
    ],
)
def test_migration_setting_errors(setting: str, message: str) -> None:
    text = TWO_POOLS + f"route: old\nmigration: {{to: new, phase: backfill, {setting}}}"
    assert error_of(text) == message


@pytest.mark.parametrize("phase", PHASES)
def test_every_phase_accepted(phase: str) -> None:
    config = parse(TWO_POOLS + f"route: old\nmigration: {{to: new, phase: {phase}}}")
    assert config.migration is not None
    assert config.migration.phase == phase


def test_migration_null_means_none() -> None:
    assert parse(TWO_POOLS + "route: old\nmigration:").migration is None


# --- collection of many problems ---


def test_every_problem_is_collected() -> None:
    text = """
foo: 1
listen: 127.0.0.1:99999
workers: abc
client: {max_connections: 'abc'}
pools:
  old:
    servers: ['127.0.0.1:7001:1 r1', '127.0.0.1:7001', '127.0.0.1:7003:1 r1']
  new:
    servers: ['127.0.0.1:7001', 'h:70000']
route: old
migration: {to: nw, phase: later}
"""
    with pytest.raises(ConfigError) as info:
        parse(text)
    expected = (
        "foo: unknown key",
        "listen: port must be 0..65535",
        "workers: expected an integer, got 'abc'",
        "client.max_connections: expected an integer, got 'abc'",
        "pools.old.servers[1]: duplicate server 127.0.0.1:7001",
        "pools.old.servers[2]: duplicate name 'r1'",
        "pools.new.servers[1]: port must be 1..65535",
        "migration.to: no pool named 'nw' (pools: old, new)",
        "migration.phase: must be one of double-write, backfill, cut-read, retire, got 'later'",
    )
    assert info.value.errors == expected
    assert str(info.value) == "; ".join(expected)


# --- Address ---


def test_address_parse_and_str() -> None:
    assert Address.parse("127.0.0.1:6380") == Address("127.0.0.1", 6380)
    assert str(Address("127.0.0.1", 6380)) == "127.0.0.1:6380"
    assert Address.parse("[::1]:6380") == Address("::1", 6380)
    assert str(Address.parse("[::1]:6380")) == "[::1]:6380"
    assert Address.parse(" localhost:1 ") == Address("localhost", 1)
    assert Address.parse("0.0.0.0:0", allow_port_zero=True) == Address("0.0.0.0", 0)
    with pytest.raises(ValueError, match=r"port must be 1\.\.65535"):
        Address.parse("h:0")
    with pytest.raises(ValueError, match="IPv6 addresses need brackets"):
        Address.parse("::1:6380")


# --- immutability ---


def test_config_is_frozen() -> None:
    config = parse(TWO_POOLS + "route: old\nmigration: {to: new, phase: backfill}")
    assert config.migration is not None
    targets: list[tuple[Any, str]] = [
        (config, "workers"),
        (config.listen, "port"),
        (config.client, "password"),
        (config.backend, "connections"),
        (config.pool("old"), "servers"),
        (config.pool("old").servers[0], "port"),
        (config.migration, "phase"),
        (config.migration.backfill, "batch_keys"),
    ]
    for obj, attr in targets:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, attr, None)
    with pytest.raises(TypeError):
        config.pools["x"] = config.pool("old")  # type: ignore[index]
    assert isinstance(config.pools, MappingProxyType)
    assert isinstance(config.pool("old").servers, tuple)


def test_pools_keep_file_order_and_are_copied_when_built_by_hand() -> None:
    config = parse(TWO_POOLS + "route: old")
    assert list(config.pools) == ["old", "new"]
    pools = dict(config.pools)
    built = dataclasses.replace(config, pools=pools)
    pools.clear()
    assert list(built.pools) == ["old", "new"]
    assert isinstance(built.pools, MappingProxyType)


def test_pool_lookup() -> None:
    config = parse(MINIMAL)
    assert config.pool("p").name == "p"
    with pytest.raises(KeyError, match="no pool named 'x'"):
        config.pool("x")


# --- ConfigError, files, hash ---


def test_config_error_shape() -> None:
    error = ConfigError(("a: x", "b: y"), source="f.yaml")
    assert error.errors == ("a: x", "b: y")
    assert str(error) == "a: x; b: y"
    assert ConfigError("one: z").errors == ("one: z",)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.errors, copy.source) == (error.errors, error.source)


def test_load_config_and_source(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(MINIMAL)
    assert load_config(str(path), env=NO_ENV) == parse(MINIMAL)
    path.write_text("pools: {}")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), env=NO_ENV)
    assert info.value.source == str(path)
    path.write_text("[")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), env=NO_ENV)
    assert info.value.errors == (
        f"{path}:1:2: invalid YAML: expected the node content, but found '<stream end>'",
    )


def test_load_config_missing_or_unreadable(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(str(missing))
    assert info.value.errors == (f"{missing}: cannot read config: No such file or directory",)
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path))
    assert info.value.errors[0].startswith(f"{tmp_path}: cannot read config: ")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError) as info:
        load_config(str(binary))
    assert info.value.errors == (f"{binary}: cannot read config: not valid UTF-8",)


def test_config_hash(tmp_path: Path) -> None:
    digest = config_hash(MINIMAL)
    assert len(digest) == 12
    assert digest == hashlib.sha256(MINIMAL.encode()).hexdigest()[:12]
    assert config_hash(MINIMAL + "\n") != digest
    path = tmp_path / "crlf.yaml"
    path.write_bytes(b"pools: {p: {servers: ['h:1']}}\r\n")
    assert read_config_file(str(path)).text == "pools: {p: {servers: ['h:1']}}\r\n"


def test_read_config_file_hashes_the_bytes_on_disk(tmp_path: Path) -> None:
    """Every reader of the file (serve, reloads, --watch, the supervisor) gets this one hash:
    a CRLF file keeps its line ends, so its hash is that of its bytes, not of its LF twin."""
    path = tmp_path / "crlf.yaml"
    data = b"pools:\r\n  p: {servers: ['h:1']}\r\n"
    path.write_bytes(data)
    file = read_config_file(str(path))
    assert file.hash == hashlib.sha256(data).hexdigest()[:12] == config_hash(file.text)
    assert file.hash != config_hash(data.decode().replace("\r\n", "\n"))
    assert load_config(str(path), env=NO_ENV) == parse(data.decode().replace("\r\n", "\n"))


# --- the shipped example files ---


def uncomment_migration(text: str) -> str:
    """The example's commented-out migration block, enabled."""
    lines = text.splitlines()
    start = lines.index("#migration:")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line[1:])
    return "\n".join(lines[:start] + block + lines[start + len(block) :])


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(path: Path) -> None:
    config = load_config(str(path), env=NO_ENV)
    assert config.pools


def test_shipped_configs_exist() -> None:
    names = {p.name for p in CONFIG_DIR.glob("*.yaml")}
    assert {"proxy.example.yaml", "local-3.yaml", "migration-example.yaml"} <= names


def test_example_documents_the_true_defaults() -> None:
    example = load_config(str(CONFIG_DIR / "proxy.example.yaml"), env=NO_ENV)
    default = parse(MINIMAL)
    skip = {"pools", "route", "routes"}
    for field in dataclasses.fields(ProxyConfig):
        if field.name not in skip:
            assert getattr(example, field.name) == getattr(default, field.name), field.name
    for pool in example.pools.values():
        expected = dataclasses.replace(default.pool("p"), name=pool.name, servers=pool.servers)
        assert pool == expected
        assert all(server.weight == 1 for server in pool.servers)


def test_example_migration_block_documents_the_true_defaults() -> None:
    text = uncomment_migration(read_config_file(str(CONFIG_DIR / "proxy.example.yaml")).text)
    raw = yaml.safe_load(text)
    raw["pools"]["new"] = {"servers": ["127.0.0.1:7001"]}
    config = parse(yaml.safe_dump(raw, sort_keys=False))
    assert config.migration == MigrationConfig(to="new", phase="double-write")


def test_example_names_every_key() -> None:
    raw = yaml.safe_load(
        uncomment_migration(read_config_file(str(CONFIG_DIR / "proxy.example.yaml")).text)
    )

    def names(cls: type[Any]) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    assert set(raw) == names(ProxyConfig) - {"defences", "admin_auth"} | set(DEFENCE_SECTIONS)
    assert set(raw["admin"]) == names(AdminAuth) | {"addr"}
    assert set(raw["hotkeys"]) == names(HotKeysConfig)
    assert set(raw["bigkeys"]) == names(BigKeysConfig)
    assert set(raw["hotcache"]) == names(HotCacheConfig)
    assert set(raw["coalesce"]) == names(CoalesceConfig)
    assert set(raw["client"]) == names(ClientConfig)
    assert set(raw["backend"]) == names(BackendConfig)
    assert set(raw["migration"]) == names(MigrationConfig) - {"source"} | {"from"}
    assert set(raw["migration"]["backfill"]) == names(BackfillConfig)
    pool_keys = set().union(*(set(pool) for pool in raw["pools"].values()))
    assert pool_keys == names(PoolConfig) - {"name"}
    long_forms = [
        s for pool in raw["pools"].values() for s in pool["servers"] if isinstance(s, dict)
    ]
    assert {"addr", "weight", "name"} <= set().union(*long_forms)


def test_local_3() -> None:
    config = load_config(str(CONFIG_DIR / "local-3.yaml"), env=NO_ENV)
    assert list(config.pools) == ["main"]
    assert config.route == "main"
    assert config.migration is None
    assert [(s.addr, s.name) for s in config.pool("main").servers] == [
        ("127.0.0.1:7001", "r1"),
        ("127.0.0.1:7002", "r2"),
        ("127.0.0.1:7003", "r3"),
    ]


def test_migration_example() -> None:
    config = load_config(str(CONFIG_DIR / "migration-example.yaml"), env=NO_ENV)
    assert config.route == "old"
    assert config.migration is not None
    assert (config.migration.to, config.migration.phase) == ("new", "double-write")
    old = [s.addr for s in config.pool("old").servers]
    new = [s.addr for s in config.pool("new").servers]
    assert old == [f"127.0.0.1:{port}" for port in (7001, 7002, 7003)]
    assert new == [f"127.0.0.1:{port}" for port in range(7001, 7006)]


def test_backend_acl_check_defaults_to_warn_and_reads_a_bare_off() -> None:
    base = "pools:\n  main: {servers: [127.0.0.1:7001:1 r1]}\n"
    assert parse_config(base, env={}).backend.acl_check == "warn"
    for raw, mode in (("off", "off"), ("refuse", "refuse"), ('"off"', "off")):
        text = f"backend:\n  acl_check: {raw}\n{base}"
        assert parse_config(text, env={}).backend.acl_check == mode
    with pytest.raises(ConfigError, match=r"backend\.acl_check"):
        parse_config(f"backend:\n  acl_check: loud\n{base}", env={})


# --- prefix routes ---

ROUTED = """
pools:
  main: {servers: ['127.0.0.1:7001']}
  queues: {servers: ['127.0.0.1:7101']}
route: main
"""


def test_routes_are_read_in_file_order() -> None:
    config = parse(ROUTED + "routes: [{prefix: 'rq:', pool: queues}, {prefix: 'a', pool: main}]")
    assert config.routes == (RouteConfig("rq:", "queues"), RouteConfig("a", "main"))
    assert parse(ROUTED).routes == ()
    assert parse(ROUTED + "routes: null").routes == ()


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ("{prefix: 'rq:', pool: queues}", "routes: expected a list of {prefix, pool} mappings"),
        ("['rq:']", "routes[0]: expected a mapping {prefix, pool}, got 'rq:'"),
        ("[{prefix: '', pool: queues}]", "routes[0].prefix: must not be empty"),
        ("[{prefix: 7, pool: queues}]", "routes[0].prefix: expected a string, got 7"),
        ("[{pool: queues}]", "routes[0].prefix: required"),
        ("[{prefix: 'rq:'}]", "routes[0].pool: required"),
        (
            "[{prefix: 'rq:', pool: nope}]",
            "routes[0].pool: no pool named 'nope' (pools: main, queues)",
        ),
        ("[{prefix: 'rq:', pool: queues, weight: 1}]", "routes[0].weight: unknown key"),
        (
            "[{prefix: 'rq:', pool: queues}, {prefix: 'rq:', pool: main}]",
            "routes[1].prefix: duplicate prefix 'rq:' (routes[0])",
        ),
    ],
)
def test_route_errors(routes: str, message: str) -> None:
    assert error_of(ROUTED + f"routes: {routes}").startswith(message)


def test_migration_from_names_the_migrating_pool() -> None:
    text = ROUTED.replace("route: main", "  next: {servers: ['127.0.0.1:7102']}\nroute: main")
    moving = parse(text + "migration: {from: queues, to: next, phase: double-write}")
    assert moving.migration_source == "queues"
    assert parse(text + "migration: {to: next, phase: double-write}").migration_source == "main"
    assert parse(text).migration_source is None
    assert error_of(text + "migration: {from: queues, to: queues, phase: double-write}") == (
        "migration.to: must name a pool other than migration.from ('queues')"
    )
    assert error_of(text + "migration: {from: nope, to: next, phase: double-write}").startswith(
        "migration.from: no pool named 'nope'"
    )


def test_defences_are_off_but_sampling_and_their_errors_carry_paths() -> None:
    config = parse(MINIMAL)
    assert config.defences.hotkeys.enabled and not config.defences.hotcache.enabled
    with pytest.raises(ConfigError) as info:
        parse(
            MINIMAL
            + "\nhotkeys: {enabled: false, top: 0}\nhotcache: {enabled: true, patterns: [''],"
            " ttl_ms: 0}\ncoalesce: {enabled: 'yes'}\nttl_jitter: [{pattern: 'a*', percent: 150},"
            " {percent: 1}, 3]\nbigkeys: {threshold_bytes: -1}\n"
        )
    text = str(info.value)
    for problem in (
        "hotkeys.top: must be 1..10000",
        "hotcache.patterns[0]: must be 1..1024 characters",
        "hotcache.ttl_ms: must be 1..3.6e+06",
        "hotcache.enabled: needs hotkeys.enabled",
        "ttl_jitter[0].percent: must be 0..100",
        "ttl_jitter[1].pattern: required",
        "ttl_jitter[2]: expected a mapping",
        "bigkeys.threshold_bytes: must be >= 0",
    ):
        assert problem in text, (problem, text)
