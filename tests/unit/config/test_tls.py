"""proxy.config.tls: client.tls, backend.tls and pools.<name>.tls as read by parse_config:
defaults, a pool's settings over backend.tls key by key, `false` and `true`, every error (exact),
a server shared by two pools, and the TLS port's checks against listen, admin and workers."""

from __future__ import annotations

import pytest

from proxy.config.schema import (
    Address,
    BackendTLSConfig,
    ClientTLSConfig,
    ProxyConfig,
    parse_config,
)
from proxy.errors import ConfigError

POOL = "pools: {p: {servers: ['127.0.0.1:7001']}}\n"


def parse(text: str) -> ProxyConfig:
    return parse_config(text, env={"CERTS": "/etc/certs"})


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return list(info.value.errors)


def test_tls_is_off_unless_configured() -> None:
    config = parse(POOL)
    assert config.client.tls is None and config.backend.tls is None
    assert config.pool("p").tls is None
    assert parse("client: {tls: false}\nbackend: {tls: null}\n" + POOL).client.tls is None


def test_client_tls_defaults_and_every_key() -> None:
    config = parse("client: {tls: {cert: '${CERTS}/p.crt', key: '${CERTS}/p.key'}}\n" + POOL)
    assert config.client.tls == ClientTLSConfig("/etc/certs/p.crt", "/etc/certs/p.key")
    assert config.client.tls.handshake_timeout_ms == 10000
    assert not config.client.tls.require_client_cert and config.client.tls.listen is None
    full = parse(
        "client:\n  tls: {cert: c, key: k, ca: a, require_client_cert: true,"
        " listen: '[::1]:6381', handshake_timeout_ms: 500}\n" + POOL
    )
    assert full.client.tls == ClientTLSConfig("c", "k", "a", True, Address("::1", 6381), 500)


@pytest.mark.parametrize(
    ("tls", "errors"),
    [
        ("{}", ["client.tls.cert: required (a PEM file)", "client.tls.key: required (a PEM file)"]),
        ("{cert: c, key: k, require_client_cert: true}", ["client.tls.ca: required when "
                                                           "require_client_cert is true"]),
        ("{cert: c, key: ''}", ["client.tls.key: must be a file path, got an empty string"]),
        ("{cert: c, key: k, bogus: 1}", ["client.tls.bogus: unknown key"]),
        ("{cert: 3, key: k}", ["client.tls.cert: expected a string, got 3"]),
        ("{cert: c, key: k, handshake_timeout_ms: 0}", ["client.tls.handshake_timeout_ms: "
                                                         "must be >= 1"]),
        ("{cert: c, key: k, listen: nowhere}", ['client.tls.listen: expected "host:port", '
                                                 "got 'nowhere'"]),
        ("{cert: c, key: k, listen: '127.0.0.1:6380'}", ["client.tls.listen: must differ from "
                                                          "listen (127.0.0.1:6380) and admin "
                                                          "(127.0.0.1:9380)"]),
        ("true", ["client.tls: expected a mapping (cert, key, ...) or false, got true"]),
    ],
)  # fmt: skip
def test_client_tls_errors(tls: str, errors: list[str]) -> None:
    assert errors_of(f"client: {{tls: {tls}}}\n" + POOL) == errors


def test_a_tls_port_shared_by_workers_needs_a_fixed_port() -> None:
    text = "workers: 2\nclient: {tls: {cert: c, key: k, listen: '127.0.0.1:0'}}\n" + POOL
    assert errors_of(text) == [
        "client.tls.listen: port 0 (any free port) cannot be shared by workers > 1; give a port"
    ]


def test_backend_tls_defaults_true_and_keys() -> None:
    assert parse("backend: {tls: true}\n" + POOL).pool("p").tls == BackendTLSConfig()
    assert BackendTLSConfig().verify == "full"  # verification is never off by default
    config = parse(
        "backend: {tls: {ca: a, cert: c, key: k, server_name: redis.test, verify: ca}}\n" + POOL
    )
    expected = BackendTLSConfig("a", "c", "k", "redis.test", "ca")
    assert config.backend.tls == expected and config.pool("p").tls == expected


@pytest.mark.parametrize(
    ("tls", "errors"),
    [
        ("{cert: c}", ["backend.tls.key: required with cert"]),
        ("{key: k}", ["backend.tls.cert: required with key"]),
        ("{verify: off}", ["backend.tls.verify: expected a string, got false"]),
        ("{verify: never}", ["backend.tls.verify: must be one of full, ca, none, got 'never'"]),
        ("{server_name: 'a b'}", ["backend.tls.server_name: must be a host name without spaces,"
                                  " got 'a b'"]),
        ("{sni: x}", ["backend.tls.sni: unknown key"]),
        ("[a]", ["backend.tls: expected a mapping (ca, cert, key, ...), true or false, got a "
                 "list"]),
    ],
)  # fmt: skip
def test_backend_tls_errors(tls: str, errors: list[str]) -> None:
    assert errors_of(f"backend: {{tls: {tls}}}\n" + POOL) == errors


def test_a_pool_overrides_backend_tls_key_by_key() -> None:
    config = parse(
        "backend: {tls: {ca: a, cert: c, key: k}}\n"
        "pools:\n"
        "  inherit: {servers: ['127.0.0.1:7001']}\n"
        "  named: {servers: ['127.0.0.1:7002'], tls: {server_name: n.test}}\n"
        "  plain: {servers: ['127.0.0.1:7003'], tls: false}\n"
        "  same: {servers: ['127.0.0.1:7004'], tls: true}\n"
        "  nil: {servers: ['127.0.0.1:7005'], tls: null}\n"
        "route: inherit\n"
    )
    base = BackendTLSConfig("a", "c", "k")
    assert config.pool("inherit").tls == base == config.pool("same").tls == config.pool("nil").tls
    assert config.pool("named").tls == BackendTLSConfig("a", "c", "k", "n.test")
    assert config.pool("plain").tls is None
    alone = parse("pools: {p: {servers: ['127.0.0.1:7001'], tls: {verify: none}}}\n")
    assert alone.backend.tls is None
    assert alone.pool("p").tls == BackendTLSConfig(verify="none")


def test_a_server_in_two_pools_has_one_tls_setting() -> None:
    text = (
        "pools:\n"
        "  old: {servers: ['127.0.0.1:7001', '127.0.0.1:7002']}\n"
        "  new: {servers: ['127.0.0.1:7003', '127.0.0.1:7002'], tls: true}\n"
        "route: old\n"
    )
    assert errors_of(text) == [
        "pools.new.servers[1]: 127.0.0.1:7002 is also in pool 'old' with other tls settings "
        "(a server has one TLS setting: give both pools the same tls)"
    ]
    assert parse(text.replace("]}\n  new", "], tls: true}\n  new"))  # the same on both: fine
