"""proxy.net.tls and the listener's failure kinds: contexts built from real PEM files (made by the
openssl command line, tests/support/tls.py): verification settings per mode, one context per
distinct setting, the name each backend is checked against, every unusable file reported at once
with its config key, and the kinds a failed client handshake is counted under."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from proxy.config.schema import ConfigError, ProxyConfig, parse_config
from proxy.net.listener import failure_kind
from proxy.net.tls import PLAIN, connect_kwargs, describe_tls, load_tls, tls_reason
from tests.support.tls import CA, OPENSSL, Issued


def config(text: str) -> ProxyConfig:
    return parse_config(text, env={})


def client_tls(cert: Issued, extra: str = "") -> str:
    return f"client:\n  tls: {{cert: {cert.cert}, key: {cert.key}{extra}}}\n"


POOLS = "pools:\n  p: {servers: ['127.0.0.1:7001', 'redis.test:7002']}\n"


def test_plain_config_builds_nothing() -> None:
    assert load_tls(config(POOLS)) == PLAIN
    assert connect_kwargs(None) == {}
    assert describe_tls(config(POOLS)) == []


@pytest.mark.parametrize(
    ("extra", "mode"),
    [
        ("", ssl.CERT_NONE),  # no CA: no client certificate asked
        (", ca: CA", ssl.CERT_OPTIONAL),
        (", ca: CA, require_client_cert: true", ssl.CERT_REQUIRED),
    ],
)
def test_listener_context_asks_client_certificates_as_configured(
    tls_ca: CA, extra: str, mode: ssl.VerifyMode
) -> None:
    cert = tls_ca.issue("unit-proxy")
    text = client_tls(cert, extra.replace("CA", str(tls_ca.cert))) + POOLS
    listener = load_tls(config(text)).listener
    assert listener is not None and listener.verify_mode == mode
    assert listener.minimum_version == ssl.TLSVersion.TLSv1_2


def test_backend_contexts_per_setting_and_names(tls_ca: CA) -> None:
    mine = tls_ca.client()
    text = (
        f"backend: {{tls: {{ca: {tls_ca.cert}, cert: {mine.cert}, key: {mine.key}}}}}\n"
        "pools:\n"
        "  a: {servers: ['127.0.0.1:7001', 'redis.test:7002']}\n"
        "  b: {servers: ['127.0.0.1:7003'], tls: {server_name: b.test, verify: ca}}\n"
        "  c: {servers: ['127.0.0.1:7004'], tls: {verify: none}}\n"
        "  d: {servers: ['127.0.0.1:7005'], tls: false}\n"
        "route: a\n"
    )
    backends = load_tls(config(text)).backends
    assert set(backends) == {f"127.0.0.1:700{i}" for i in (1, 3, 4)} | {"redis.test:7002"}
    a1, a2 = backends["127.0.0.1:7001"], backends["redis.test:7002"]
    assert a1.context is a2.context  # one context per distinct setting
    assert (a1.server_name, a2.server_name) == ("127.0.0.1", "redis.test")
    assert a1.context.check_hostname and a1.context.verify_mode == ssl.CERT_REQUIRED
    b = backends["127.0.0.1:7003"]
    assert b.server_name == "b.test"
    assert not b.context.check_hostname and b.context.verify_mode == ssl.CERT_REQUIRED
    c = backends["127.0.0.1:7004"].context
    assert not c.check_hostname and c.verify_mode == ssl.CERT_NONE
    assert connect_kwargs(b) == {"ssl": b.context, "server_hostname": "b.test"}
    assert describe_tls(config(text)) == [
        f"pool a TLS: verify full ({tls_ca.cert}), client cert {mine.cert}",
        f"pool b TLS: verify ca ({tls_ca.cert}, name b.test), client cert {mine.cert}",
        f"pool c TLS: verify none, client cert {mine.cert}",
    ]


def test_every_unusable_file_is_reported_with_its_key(tls_ca: CA, tmp_path: Path) -> None:
    cert, other = tls_ca.issue("unit-a"), tls_ca.issue("unit-b")
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        [
            OPENSSL,
            "ec",
            "-in",
            str(cert.key),
            "-aes128",
            "-passout",
            "pass:x",
            "-out",
            str(encrypted),
        ],
        check=True,
        capture_output=True,
    )
    missing = tmp_path / "missing.crt"
    text = (
        f"client:\n  tls: {{cert: {cert.cert}, key: {other.key}}}\n"
        f"backend:\n  tls: {{ca: {junk}}}\n"
        "pools:\n"
        "  a: {servers: ['127.0.0.1:7001']}\n"
        f"  b: {{servers: ['127.0.0.1:7002'], tls: {{ca: {missing}}}}}\n"
        f"  c: {{servers: ['127.0.0.1:7003'],\n"
        f"      tls: {{ca: null, cert: {cert.cert}, key: {encrypted}}}}}\n"
        f"  d: {{servers: ['127.0.0.1:7004'], tls: {{ca: null, cert: {junk}, key: {cert.key}}}}}\n"
        "route: a\n"
    )
    with pytest.raises(ConfigError) as info:
        load_tls(config(text))
    assert list(info.value.errors) == [
        f"client.tls.cert: cannot use {cert.cert}: key values mismatch",
        f"backend.tls.ca: cannot use {junk}: holds no PEM CA certificate",
        f"pools.b.tls.ca: cannot use {missing}: No such file or directory",
        f"pools.c.tls.key: cannot use {encrypted}: encrypted private keys are not supported: the"
        " proxy cannot ask for a passphrase",
        f"pools.d.tls.cert: cannot use {junk}: holds no PEM certificate",
    ]


def test_handshake_failure_kinds_and_reasons() -> None:
    aborted = ConnectionAbortedError("SSL handshake is taking longer than 10.0 seconds")
    assert failure_kind(aborted) == "timeout"
    unverified = ssl.SSLCertVerificationError(1, "certificate verify failed")
    unverified.verify_message = "unable to get local issuer certificate"
    assert failure_kind(unverified) == "certificate"
    assert (
        tls_reason(unverified)
        == "certificate verify failed: unable to get local issuer certificate"
    )
    missing = ssl.SSLError(1, "[SSL: PEER_DID_NOT_RETURN_A_CERTIFICATE]")
    missing.reason = "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert failure_kind(missing) == "certificate"
    assert tls_reason(missing) == "peer did not return a certificate"
    wrong = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER]")
    wrong.reason = "WRONG_VERSION_NUMBER"
    assert failure_kind(wrong) == "protocol"
    assert failure_kind(ConnectionResetError()) == "protocol"
