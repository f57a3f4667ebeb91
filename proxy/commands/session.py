"""A client's connection state (Session) and what the proxy's own commands may ask of the
running server (ServerView), pure: read by commands/local.py and commands/clients.py, kept apart
so that neither imports the other's module while it is being imported (a compiled module's
dataclass needs its field types at import time).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from proxy.commands.users import User, Users


def lane_for(proto: int, db: int) -> int:
    """The key of a backend's shared connections: a RESP version (2 or 3) and a database.
    A db 0 lane is the protocol version itself, so db 0 costs nothing (net/backend.py)."""
    return proto | db << 2


def proto_of(lane: int) -> int:
    return lane & 3


def db_of(lane: int) -> int:
    return lane >> 2


@dataclass
class Session:
    """Per-client connection state that local commands read and change."""

    client_id: int
    peer: str
    users: Users  # of the config in use (rebind swaps them on reload)
    user: User = field(init=False)  # who the client is: `default` until AUTH names another
    proto: int = 2
    db: int = 0  # SELECTed
    lane: int = 2  # lane_for(proto, db): the backend connections its requests use
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
    closing: bool = False  # QUIT: close once the replies before it are written
    reply_mode: bytes = b"on"  # CLIENT REPLY: on, off, skip (the next command's reply)
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

    def set_proto(self, proto: int) -> None:
        self.proto = proto
        self.lane = lane_for(proto, self.db)

    def set_db(self, db: int) -> None:
        self.db = db
        self.lane = lane_for(self.proto, db)

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
        plain = self.authed and not self.in_tx and not self.subscribed and self.reply_mode == b"on"
        self.direct = plain and self.user.all_keys
        self.keyed = plain and not self.user.all_keys

    def set_reply_mode(self, mode: bytes) -> None:
        self.reply_mode = mode
        self._update_direct()


class ServerView(Protocol):
    """What INFO and HELLO may tell about the running proxy."""

    databases: int  # the config's `databases`: SELECT takes 0..databases-1

    def info_sections(self) -> list[tuple[str, list[tuple[str, str]]]]: ...

    def client_rows(self) -> list[ClientRow]:
        """The proxy's clients (this process's), for CLIENT LIST and KILL."""
        ...

    def client_row(self, client_id: int) -> ClientRow | None: ...

    def kill_client(self, client_id: int) -> None:
        """Close that client's connection now (CLIENT KILL)."""
        ...

    def unblock_client(self, client_id: int, error: bool) -> bool:
        """End that client's blocking call (CLIENT UNBLOCK); False if it is not blocked."""
        ...


@dataclass(frozen=True, slots=True)
class ClientRow:
    """What the server tells of one client beyond its Session."""

    session: Session
    laddr: str  # the proxy's address the client connected to
    idle_s: float  # since its last request
    subscriptions: tuple[int, int, int]  # channels, patterns, shard channels
    queued: int  # commands queued in MULTI; -1 when not in MULTI
    output_bytes: int  # replies written to its socket, not yet sent

    @property
    def kind(self) -> bytes:
        """Its CLIENT LIST / KILL type: pubsub while subscribed, else normal."""
        return b"pubsub" if any(self.subscriptions) else b"normal"
