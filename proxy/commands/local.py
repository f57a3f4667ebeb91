"""Commands the proxy answers itself: connection state (HELLO AUTH SELECT CLIENT RESET QUIT),
PING/ECHO, INFO and TIME.

Handlers read and change the client's session and return the encoded reply, shaped for the
session's protocol (RESP2 or RESP3). COMMAND is not answered here: the client forwards it to a
backend so its metadata is exactly Redis's own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from proxy import __version__, errors
from proxy.codec.resp import OK, PONG, encode_bulk, encode_int, encode_map_raw, encode_simple
from proxy.commands.checks import db_index
from proxy.commands.clients import client_info, client_kill, client_list, client_unblock
from proxy.commands.session import ServerView, Session
from proxy.commands.spec import CommandSpec
from proxy.commands.table import REDIS_VERSION  # whose command table the proxy serves

Handler = Callable[[list[bytes], Session, ServerView], bytes]


def run_local(spec: CommandSpec, args: list[bytes], session: Session, view: ServerView) -> bytes:
    handler = _HANDLERS.get(spec.name)
    if handler is None:
        return errors.denied(spec.name)
    return handler(args, session, view)


def _ping(args: list[bytes], session: Session, view: ServerView) -> bytes:
    if len(args) > 2:
        return errors.wrong_arity("ping")
    if len(args) == 1:
        return PONG
    return encode_bulk(args[1])


def _echo(args: list[bytes], session: Session, view: ServerView) -> bytes:
    return encode_bulk(args[1])


def _quit(args: list[bytes], session: Session, view: ServerView) -> bytes:
    session.closing = True
    return OK


def _select(args: list[bytes], session: Session, view: ServerView) -> bytes:
    db = db_index(args[1], view.databases)
    if isinstance(db, bytes):
        return db
    session.set_db(db)
    return OK


def check_password(session: Session, user: bytes | None, password: bytes) -> bytes | None:
    """None when the credentials are right (the session is then that user's), else the error.
    Without client.password the default user is Redis's `nopass`: any password is right."""
    users = session.users
    if user is None and users.default.password_sha256 is None:
        return errors.auth_not_configured()
    found = users.authenticate(None if user == b"default" else user, password)
    if found is None:
        return errors.wrongpass()
    session.set_user(found)
    return None


def _auth(args: list[bytes], session: Session, view: ServerView) -> bytes:
    if len(args) > 3:
        return errors.syntax_error()
    user, password = (None, args[1]) if len(args) == 2 else (args[1], args[2])
    problem = check_password(session, user, password)
    return problem or OK


def _hello(args: list[bytes], session: Session, view: ServerView) -> bytes:
    proto = session.proto
    i = 1
    if len(args) > 1:
        try:
            proto = int(args[1])
        except ValueError:
            return errors.protocol_error("unsupported protocol version")
        if proto not in (2, 3):
            return errors.noproto()
        i = 2
    name: bytes | None = None
    while i < len(args):
        opt = args[i].upper()
        if opt == b"AUTH" and i + 2 < len(args):
            problem = check_password(session, args[i + 1], args[i + 2])
            if problem is not None:
                return problem
            i += 3
        elif opt == b"SETNAME" and i + 1 < len(args):
            name = args[i + 1]
            i += 2
        else:
            return errors.syntax_error()
    if not session.authed:
        return errors.hello_noauth()
    if name is not None:
        if _bad_name(name):
            return errors.invalid_client_name()
        session.name = name or None
    session.set_proto(proto)
    resp3 = proto == 3
    fields = [
        (b"server", encode_bulk(b"redis")),
        (b"version", encode_bulk(REDIS_VERSION.encode())),
        (b"proto", encode_int(proto)),
        (b"id", encode_int(session.client_id)),
        (b"mode", encode_bulk(b"standalone")),
        (b"role", encode_bulk(b"master")),
        (b"modules", b"*0\r\n"),
    ]
    return encode_map_raw(((encode_bulk(k), v) for k, v in fields), len(fields), resp3)


def _bad_name(name: bytes) -> bool:
    return any(c <= 32 or c > 126 for c in name)


def _client_setname(args: list[bytes], session: Session, view: ServerView) -> bytes:
    if _bad_name(args[2]):
        return errors.invalid_client_name()
    session.name = args[2] or None
    return OK


def _client_getname(args: list[bytes], session: Session, view: ServerView) -> bytes:
    return encode_bulk(session.name, session.proto == 3)


def _client_id(args: list[bytes], session: Session, view: ServerView) -> bytes:
    return encode_int(session.client_id)


def _client_reply(args: list[bytes], session: Session, view: ServerView) -> bytes:
    """CLIENT REPLY ON|OFF|SKIP: the proxy drops the replies (net/dispatch.py)."""
    mode = args[2].lower()
    if mode not in (b"on", b"off", b"skip"):
        return errors.syntax_error()
    session.set_reply_mode(mode)
    return OK


def _reset(args: list[bytes], session: Session, view: ServerView) -> bytes:
    session.set_reply_mode(b"on")
    session.set_proto(2)
    session.set_db(0)  # as Redis's RESET
    session.name = None
    session.reset_user()
    session.set_in_tx(False)  # the proxy's transaction state is reset by net/transaction
    return encode_simple("RESET")


def _acl_whoami(args: list[bytes], session: Session, view: ServerView) -> bytes:
    return encode_bulk(session.user.name.encode())


def _time(args: list[bytes], session: Session, view: ServerView) -> bytes:
    now = time.time()
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    return b"*2\r\n" + encode_bulk(b"%d" % sec) + encode_bulk(b"%d" % usec)


def info_body(args: list[bytes], view: ServerView, keyspace: bytes = b"") -> bytes:
    """The INFO text of the proxy's own sections that `args` asks for, then `keyspace`."""
    wanted = {a.lower().decode(errors="replace") for a in args[1:]}
    everything = not wanted or wanted & {"all", "everything", "default"}
    lines: list[str] = []
    for title, fields in view.info_sections():
        if not everything and title.lower() not in wanted:
            continue
        if lines:
            lines.append("")
        lines.append(f"# {title}")
        lines.extend(f"{k}:{v}" for k, v in fields)
    body = ("\r\n".join(lines) + "\r\n").encode() if lines else b""
    if keyspace:
        body += (b"\r\n" if body else b"") + keyspace
    return body


def encode_info(body: bytes, proto: int) -> bytes:
    if proto == 3:
        return b"=%d\r\ntxt:%s\r\n" % (len(body) + 4, body)
    return encode_bulk(body)


def _info(args: list[bytes], session: Session, view: ServerView) -> bytes:
    return encode_info(info_body(args, view), session.proto)


def keyspace_dbs(text: bytes) -> dict[int, tuple[int, int, int]]:
    """The `dbN:keys=..,expires=..,avg_ttl=..` lines of an `INFO keyspace` text, by db."""
    dbs: dict[int, tuple[int, int, int]] = {}
    for line in text.splitlines():
        head, _, rest = line.partition(b":")
        if not (head.startswith(b"db") and head[2:].isdigit() and rest):
            continue
        fields = dict(f.split(b"=", 1) for f in rest.split(b",") if b"=" in f)
        values = [fields.get(name, b"0") for name in (b"keys", b"expires", b"avg_ttl")]
        if all(v.isdigit() for v in values):
            dbs[int(head[2:])] = (int(values[0]), int(values[1]), int(values[2]))
    return dbs


def sum_keyspace(replies: list[bytes]) -> bytes:
    """`# Keyspace` summed per db over the backends' `INFO keyspace` texts, as Redis lists it:
    every db that has keys, whichever the client selected."""
    totals: dict[int, list[int]] = {}
    for raw in replies:
        for db, (keys, expires, avg_ttl) in keyspace_dbs(raw).items():
            total = totals.setdefault(db, [0, 0, 0])
            total[0] += keys
            total[1] += expires
            total[2] += avg_ttl * expires  # weighted by the keys it is the average of
    out = b"# Keyspace\r\n"
    for db in sorted(totals):
        keys, expires, ttl_weighted = totals[db]
        if keys:
            avg_ttl = ttl_weighted // expires if expires else 0
            out += b"db%d:keys=%d,expires=%d,avg_ttl=%d\r\n" % (db, keys, expires, avg_ttl)
    return out


def server_section(started_monotonic: float) -> list[tuple[str, str]]:
    uptime = int(time.monotonic() - started_monotonic)
    return [
        ("redis_version", REDIS_VERSION),
        ("redis_mode", "standalone"),
        ("shardproxy_version", __version__),
        ("process_id", str(os.getpid())),
        ("uptime_in_seconds", str(uptime)),
        ("uptime_in_days", str(uptime // 86400)),
    ]


_HANDLERS: dict[str, Handler] = {
    "ping": _ping,
    "echo": _echo,
    "quit": _quit,
    "select": _select,
    "auth": _auth,
    "hello": _hello,
    "client|setname": _client_setname,
    "client|getname": _client_getname,
    "client|id": _client_id,
    "client|info": client_info,
    "client|list": client_list,
    "client|reply": _client_reply,
    "client|unblock": client_unblock,
    "client|kill": client_kill,
    "reset": _reset,
    "time": _time,
    "info": _info,
    "acl|whoami": _acl_whoami,
}
