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
from dataclasses import dataclass, field
from typing import Protocol

from proxy import __version__, errors
from proxy.codec.resp import OK, PONG, encode_bulk, encode_int, encode_map_raw, encode_simple
from proxy.commands.spec import CommandSpec
from proxy.commands.table import REDIS_VERSION  # whose command table the proxy serves
from proxy.commands.users import User, Users


@dataclass
class Session:
    """Per-client connection state that local commands read and change."""

    client_id: int
    peer: str
    users: Users  # of the config in use (rebind swaps them on reload)
    user: User = field(init=False)  # who the client is: `default` until AUTH names another
    proto: int = 2
    authed: bool = False
    # Inside MULTI, or pinned by WATCH: every request goes to net/transaction.py (dispatch).
    in_tx: bool = False
    subscribed: bool = False  # holds subscriptions (net/pubsub.py)
    # Requests may take the single-key fast path: authenticated, not in a transaction, not
    # subscribed, as a user allowed every key (the client's fast path asks `allows` of the
    # command names it learns). Kept by the setters below, the one place it is computed.
    direct: bool = False
    # The same, but as a user with key patterns: the fast path once its key is allowed
    # (net/client.py's _process checks User.key_ok; a key refused goes to dispatch: NOPERM).
    keyed: bool = False
    name: bytes | None = None
    lib_name: bytes | None = None
    lib_ver: bytes | None = None
    closing: bool = False  # QUIT: close once the replies before it are written
    created: float = field(default_factory=time.monotonic)
    # Called when `user` or its rules change (AUTH, RESET, a reload): the client forgets what
    # its fast path learnt of command names under the old rules.
    on_user_change: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.reset_user()

    def reset_user(self) -> None:
        """The default user, authenticated only if it has no password (a new client, RESET)."""
        self._set_user(self.users.default)
        self.set_authed(self.user.password_sha256 is None)

    def _set_user(self, user: User) -> None:
        self.user = user
        if self.on_user_change is not None:
            self.on_user_change()

    def set_authed(self, authed: bool) -> None:
        self.authed = authed
        self._update_direct()

    def set_user(self, user: User) -> None:
        self._set_user(user)
        self.set_authed(True)

    def rebind(self, users: Users) -> bool:
        """A reload's users: False when this client's user is gone (Redis disconnects it)."""
        self.users = users
        user = users.default if self.user.name == "default" else users.get(self.user.name)
        if user is None:
            return False
        self._set_user(user)
        self._update_direct()
        return True

    def set_in_tx(self, in_tx: bool) -> None:
        self.in_tx = in_tx
        self._update_direct()

    def set_subscribed(self, subscribed: bool) -> None:
        self.subscribed = subscribed
        self._update_direct()

    def _update_direct(self) -> None:
        plain = self.authed and not self.in_tx and not self.subscribed
        self.direct = plain and self.user.all_keys
        self.keyed = plain and not self.user.all_keys


class ServerView(Protocol):
    """What INFO and HELLO may tell about the running proxy."""

    def info_sections(self) -> list[tuple[str, list[tuple[str, str]]]]: ...


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
    try:
        db = int(args[1])
    except ValueError:
        return errors.not_integer()
    return OK if db == 0 else errors.select_db()


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
    session.proto = proto
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


def _client_setinfo(args: list[bytes], session: Session, view: ServerView) -> bytes:
    attr = args[2].lower()
    if attr == b"lib-name":
        if _bad_name(args[3]):
            return errors.invalid_client_info("lib-name")
        session.lib_name = args[3]
    elif attr == b"lib-ver":
        if _bad_name(args[3]):
            return errors.invalid_client_info("lib-ver")
        session.lib_ver = args[3]
    else:
        return errors.unrecognized_option(args[2])
    return OK


def client_info_line(session: Session) -> bytes:
    age = int(time.monotonic() - session.created)
    return (
        f"id={session.client_id} addr={session.peer} name={(session.name or b'').decode()} "
        f"age={age} db=0 resp={session.proto} "
        f"lib-name={(session.lib_name or b'').decode()} "
        f"lib-ver={(session.lib_ver or b'').decode()}\n"
    ).encode()


def _client_info(args: list[bytes], session: Session, view: ServerView) -> bytes:
    return encode_bulk(client_info_line(session))


def _reset(args: list[bytes], session: Session, view: ServerView) -> bytes:
    session.proto = 2
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


def wants_keyspace(args: list[bytes]) -> bool:
    """Does INFO with these arguments include the # Keyspace section (summed over backends)?"""
    wanted = {a.lower() for a in args[1:]}
    return not wanted or bool(wanted & {b"all", b"everything", b"default", b"keyspace"})


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


def sum_keyspace(replies: list[bytes]) -> bytes:
    """`# Keyspace` summed over the backends' `INFO keyspace` texts (db0 only: the proxy's db)."""
    keys = expires = 0
    ttl_weighted = 0
    for raw in replies:
        for line in raw.splitlines():
            if not line.startswith(b"db0:"):
                continue
            fields = dict(f.split(b"=", 1) for f in line[4:].split(b",") if b"=" in f)
            k, e = int(fields.get(b"keys", 0)), int(fields.get(b"expires", 0))
            keys += k
            expires += e
            ttl_weighted += int(fields.get(b"avg_ttl", 0)) * e
    out = b"# Keyspace\r\n"
    if keys:
        avg_ttl = ttl_weighted // expires if expires else 0
        out += b"db0:keys=%d,expires=%d,avg_ttl=%d\r\n" % (keys, expires, avg_ttl)
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
    "client|setinfo": _client_setinfo,
    "client|info": _client_info,
    "reset": _reset,
    "time": _time,
    "info": _info,
    "acl|whoami": _acl_whoami,
}
