"""The backend user's ACL check, at start and on reload (backend.acl_check: warn | refuse | off).

One throwaway connection per backend, as the proxy's own user, asks Redis what that user may run
without running it: `redis.acl_check_cmd` in one EVAL (allowed by the recommended rules, which
deny ACL itself as @admin), else `ACL DRYRUN` per probe. The answers are judged against
proxy/commands/acl.py's probes. Checks run concurrently, each bounded by the connect and command
timeouts; an unreachable backend is reported unchecked and never blocks anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis

from proxy import errors
from proxy.codec.resp import encode_request
from proxy.commands.acl import AclProbes, AclVerdict, build_probes, judge, probe_args
from proxy.config.schema import BackendConfig, ProxyConfig, ServerConfig
from proxy.net.probe import auth_command, close_throwaway, os_reason
from proxy.net.tls import BackendTLS, backend_tls, connect_kwargs

log = logging.getLogger("shardproxy.aclcheck")

# Each ARGV is one probe, its words separated by spaces; Lua's false would end the table, so 1/0.
_SCRIPT = b"""local out = {}
for i, line in ipairs(ARGV) do
  local argv = {}
  for word in string.gmatch(line, '%S+') do argv[#argv + 1] = word end
  out[i] = redis.acl_check_cmd(unpack(argv)) and 1 or 0
end
return out"""


class AclCheckError(Exception):
    """backend.acl_check is refuse and a backend's user is too broad or too narrow."""


@dataclass(frozen=True, slots=True)
class AclReport:
    """One backend's answer: a verdict, or why there is none."""

    addr: str
    verdict: AclVerdict | None  # None: not checked (unreachable, AUTH failed, no way to ask)
    note: str = ""  # how it was checked, or why not

    @property
    def failed(self) -> bool:
        return self.verdict is not None and not self.verdict.ok

    def describe(self) -> str:
        if self.verdict is None:
            return f"not checked: {self.note}"
        text = self.verdict.describe()
        return f"{text} ({self.note})" if self.note else text


class _Session:
    """Requests and replies in order on one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = hiredis.Reader()

    async def call_many(self, requests: Sequence[Sequence[bytes]]) -> list[Any]:
        self.writer.write(b"".join(encode_request(list(r)) for r in requests))
        replies: list[Any] = []
        while len(replies) < len(requests):
            reply = self.parser.gets()
            if reply is not False:
                replies.append(reply)
                continue
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionResetError("connection closed by the backend")
            self.parser.feed(data)
        return replies


async def check_backend(
    addr: ServerConfig, cfg: BackendConfig, probes: AclProbes, tls: BackendTLS | None = None
) -> AclReport:
    timeout_s = (cfg.connect_timeout_ms + cfg.command_timeout_ms) / 1000
    try:
        return await asyncio.wait_for(_check(addr, cfg, probes, tls), timeout_s)
    except TimeoutError:
        return AclReport(addr.addr, None, errors.acl_no_answer(timeout_s))
    except OSError as exc:
        return AclReport(addr.addr, None, os_reason(exc))


async def _check(
    addr: ServerConfig, cfg: BackendConfig, probes: AclProbes, tls: BackendTLS | None
) -> AclReport:
    reader, writer = await asyncio.open_connection(addr.host, addr.port, **connect_kwargs(tls))
    try:
        session = _Session(reader, writer)
        auth = auth_command(cfg)
        if auth is not None:
            (reply,) = await session.call_many([auth])
            if isinstance(reply, hiredis.ReplyError):
                return AclReport(addr.addr, None, errors.acl_auth_failed(reply))
        return await _ask(addr.addr, session, cfg.username or "default", probes)
    finally:
        close_throwaway(writer.transport)


async def _ask(addr: str, session: _Session, user: str, probes: AclProbes) -> AclReport:
    lines = [" ".join(probe_args(name)).encode() for name in probes.all()]
    (reply,) = await session.call_many([[b"EVAL", _SCRIPT, b"0", *lines]])
    if isinstance(reply, list):
        return AclReport(addr, judge(probes, [r == 1 for r in reply]))
    dryruns = [
        [b"ACL", b"DRYRUN", user.encode(), *(a.encode() for a in probe_args(name))]
        for name in probes.all()
    ]
    replies = await session.call_many(dryruns)
    refused = next((r for r in replies if isinstance(r, hiredis.ReplyError)), None)
    if refused is None:
        return AclReport(addr, judge(probes, [r == b"OK" for r in replies]), "by ACL DRYRUN")
    if str(refused).startswith("NOPERM"):
        # ACL DRYRUN is @admin: refusing it shows @admin is denied, but EVAL is refused too,
        # and the proxy forwards EVAL; nothing else can be asked without running it.
        note = errors.acl_admin_denied(reply)
        return AclReport(addr, AclVerdict(too_broad=(), too_narrow=("eval",)), note)
    return AclReport(addr, None, errors.acl_unchecked(reply, refused))


def backend_addrs(config: ProxyConfig) -> list[ServerConfig]:
    """Every backend of every pool, once."""
    seen: dict[str, ServerConfig] = {}
    for pool in config.pools.values():
        for server in pool.servers:
            seen.setdefault(server.addr, server)
    return list(seen.values())


def backend_names(config: ProxyConfig) -> dict[str, str]:
    """Address -> display name (server name, else address), as the topology names backends."""
    names: dict[str, str] = {}
    for pool in config.pools.values():
        for server in pool.servers:
            names.setdefault(server.addr, server.name or server.addr)
    return names


async def check_config(
    config: ProxyConfig, tls: Mapping[str, BackendTLS] | None = None
) -> list[AclReport]:
    """Every backend of `config`, checked concurrently; over TLS where `tls` (by default the
    config's, its files read now) says so."""
    probes = build_probes(config.allow_flush, bool(config.allow_config_set))
    servers = backend_addrs(config)
    tls = backend_tls(config) if tls is None else tls
    checks = (check_backend(s, config.backend, probes, tls.get(s.addr)) for s in servers)
    return list(await asyncio.gather(*checks))


def warning(name: str, report: AclReport, mode: str) -> str:
    """The log line for a backend whose user is not as `shardproxy acl` prints."""
    return errors.acl_too_broad(name, report.addr, report.describe(), mode)


def log_reports(reports: Iterable[AclReport], names: Mapping[str, str], mode: str) -> None:
    """One warning per backend whose user is not as `shardproxy acl` prints or was not checked."""
    for report in reports:
        name = names.get(report.addr, report.addr)
        if report.verdict is None:
            log.warning("backend %s (%s): ACL %s", name, report.addr, report.describe())
        elif report.failed:
            log.warning("%s", warning(name, report, mode))


def refusal(reports: Iterable[AclReport]) -> str:
    """Why `refuse` mode refuses these reports ("" when it does not): one line."""
    bad = [f"{r.addr} {r.describe()}" for r in reports if r.failed]
    if not bad:
        return ""
    return errors.acl_refused(bad)
