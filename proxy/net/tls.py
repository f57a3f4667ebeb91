"""TLS contexts built from the config: the listener's (client.tls) and every backend's (backend.tls,
pools.<name>.tls), and the arguments a backend connection is opened with.

Every certificate, key and CA file is read when the contexts are built: at start and on each
reload, so a renewed certificate is used by the connections made after the reload while the
open ones keep theirs. A file that cannot be used raises ConfigError naming the config key and
the file, so a reload with a bad certificate is refused and the old contexts keep serving.
Plain connections never see this module: with TLS off, connect_kwargs is empty.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from proxy import errors
from proxy.config.schema import BackendTLSConfig, ClientTLSConfig, ConfigError, ProxyConfig

MIN_VERSION: Final = ssl.TLSVersion.TLSv1_2  # Redis's own default (tls-protocols)
_CERT_MARK: Final = b"-----BEGIN CERTIFICATE-----"
_KEY_MARK: Final = b"PRIVATE KEY-----"
_ENCRYPTED_MARKS: Final = (b"ENCRYPTED PRIVATE KEY", b"Proc-Type: 4,ENCRYPTED")


@dataclass(frozen=True, slots=True)
class BackendTLS:
    """How one backend is reached over TLS: the context of its pool's settings, and the name
    sent as SNI and checked against its certificate."""

    context: ssl.SSLContext
    server_name: str


def connect_kwargs(tls: BackendTLS | None) -> dict[str, Any]:
    """Extra arguments of loop.create_connection / asyncio.open_connection: none when plain."""
    if tls is None:
        return {}
    return {"ssl": tls.context, "server_hostname": tls.server_name}


def listener_context(config: ProxyConfig) -> ssl.SSLContext | None:
    """client.tls's server context (None: plain); ConfigError when a file cannot be used."""
    tls = config.client.tls
    if tls is None:
        return None
    problems: list[str] = []
    context = _guard(problems, lambda: server_context(tls, "client.tls"))
    if problems:
        raise ConfigError(problems)
    return context


def server_context(cfg: ClientTLSConfig, path: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSION
    _load_chain(context, cfg.cert, cfg.key, path)
    if cfg.ca is not None:
        _load_ca(context, cfg.ca, f"{path}.ca")
        # With a CA, a certificate a client offers is checked; without it, it is never asked.
        context.verify_mode = ssl.CERT_REQUIRED if cfg.require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(cfg: BackendTLSConfig, path: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    context.minimum_version = MIN_VERSION
    if cfg.verify == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = cfg.verify == "full"
        if cfg.ca is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            _load_ca(context, cfg.ca, f"{path}.ca")
    if cfg.cert is not None and cfg.key is not None:
        _load_chain(context, cfg.cert, cfg.key, path)
    return context


def backend_tls(config: ProxyConfig) -> dict[str, BackendTLS]:
    """Every TLS backend's address -> how it is reached; one context per distinct setting.
    ConfigError lists every file that cannot be used."""
    problems: list[str] = []
    contexts: dict[BackendTLSConfig, ssl.SSLContext | None] = {}
    result: dict[str, BackendTLS] = {}
    for pool in config.pools.values():
        cfg = pool.tls
        if cfg is None:
            continue
        if cfg not in contexts:
            path = "backend.tls" if cfg == config.backend.tls else f"pools.{pool.name}.tls"
            contexts[cfg] = _guard(problems, partial(client_context, cfg, path))
        context = contexts[cfg]
        if context is None:
            continue
        for server in pool.servers:
            result[server.addr] = BackendTLS(context, cfg.server_name or server.host)
    if problems:
        raise ConfigError(problems)
    return result


@dataclass(frozen=True, slots=True)
class TLSContexts:
    """Everything TLS of one config, built (every file read) by load_tls."""

    listener: ssl.SSLContext | None  # client.tls; None: clients speak plain text
    backends: dict[str, BackendTLS]  # backend address -> its TLS; absent: plain


PLAIN: Final = TLSContexts(None, {})


def load_tls(config: ProxyConfig) -> TLSContexts:
    """Build every context of `config`; ConfigError lists each problem (nothing half-built)."""
    problems: list[str] = []
    listener = backends = None
    try:
        listener = listener_context(config)
    except ConfigError as exc:
        problems += exc.errors
    try:
        backends = backend_tls(config)
    except ConfigError as exc:
        problems += exc.errors
    if problems or backends is None:
        raise ConfigError(problems)
    return TLSContexts(listener, backends)


def _guard(problems: list[str], build: Callable[[], ssl.SSLContext]) -> ssl.SSLContext | None:
    try:
        return build()
    except ConfigError as exc:
        problems += exc.errors
        return None


def _load_chain(context: ssl.SSLContext, cert: str, key: str, path: str) -> None:
    _check_pem(f"{path}.cert", cert, _CERT_MARK, "certificate")
    key_pem = _check_pem(f"{path}.key", key, _KEY_MARK, "private key")
    if any(mark in key_pem for mark in _ENCRYPTED_MARKS):
        raise ConfigError(errors.tls_file(f"{path}.key", key, errors.TLS_ENCRYPTED_KEY))
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except (OSError, ValueError) as exc:
        raise ConfigError(errors.tls_file(f"{path}.cert", cert, tls_reason(exc))) from None


def _load_ca(context: ssl.SSLContext, ca: str, path: str) -> None:
    _check_pem(path, ca, _CERT_MARK, "CA certificate")
    try:
        context.load_verify_locations(cafile=ca)
    except OSError as exc:
        raise ConfigError(errors.tls_file(path, ca, tls_reason(exc))) from None


def _check_pem(path: str, file: str, mark: bytes, what: str) -> bytes:
    """The file's bytes; ConfigError when it cannot be read or holds no PEM `what`."""
    try:
        with open(file, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigError(errors.tls_file(path, file, tls_reason(exc))) from None
    if mark not in data:
        raise ConfigError(errors.tls_file(path, file, f"holds no PEM {what}"))
    return data


def _no_password() -> bytes:
    # OpenSSL would otherwise prompt on the terminal for an encrypted key's passphrase.
    raise ValueError(errors.TLS_ENCRYPTED_KEY)


def tls_reason(exc: BaseException) -> str:
    """A short reason for a TLS or file error: 'key values mismatch', 'certificate verify
    failed: self-signed certificate', 'No such file or directory'."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or exc.strerror or str(exc)
        return str(reason).lower().replace("_", " ")
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def describe_tls(config: ProxyConfig) -> list[str]:
    """One line per TLS setting in use, for `shardproxy check` (nothing when all plain)."""
    lines: list[str] = []
    tls = config.client.tls
    if tls is not None:
        where = f"on {tls.listen} (plain on {config.listen})" if tls.listen else "on listen"
        clients = "required" if tls.require_client_cert else "checked if sent" if tls.ca else "no"
        lines.append(f"client TLS {where}: cert {tls.cert}, client certificates {clients}")
    for pool in config.pools.values():
        cfg = pool.tls
        if cfg is not None:
            name = f", name {cfg.server_name}" if cfg.server_name else ""
            trust = "" if cfg.verify == "none" else f" ({cfg.ca or 'system CAs'}{name})"
            mine = f", client cert {cfg.cert}" if cfg.cert else ""
            lines.append(f"pool {pool.name} TLS: verify {cfg.verify}{trust}{mine}")
    return lines
