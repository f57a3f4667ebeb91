"""CLIENT INFO, LIST and KILL over the proxy's own clients, pure: the lines and the filters of
Redis 7.0.

A proxy's clients are its own, not its backends': CLIENT LIST shows the connections this proxy
process holds (with workers, the worker's), in Redis 7.0.15's field order, and CLIENT KILL closes
them. Fields the proxy has no counterpart for (fd, query buffer sizes) read 0, as for a client
Redis has just read nothing from.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from proxy import errors
from proxy.codec.resp import OK, encode_bulk, encode_int
from proxy.commands.session import ClientRow, ServerView, Session

_TYPES = frozenset({b"normal", b"master", b"replica", b"slave", b"pubsub"})


def client_line(row: ClientRow) -> bytes:
    s = row.session
    sub, psub, ssub = row.subscriptions
    flags = ("P" if row.kind == b"pubsub" else "") + ("x" if row.queued >= 0 else "") or "N"
    return (
        f"id={s.client_id} addr={s.peer} laddr={row.laddr} fd=0 "
        f"name={(s.name or b'').decode(errors='replace')} "
        f"age={int(time.monotonic() - s.created)} idle={int(row.idle_s)} flags={flags} "
        f"db={session_db(s)} sub={sub} psub={psub} ssub={ssub} multi={row.queued} qbuf=0 "
        f"qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem={row.output_bytes} "
        f"tot-mem={row.output_bytes} events=r cmd=NULL user={session_user(s)} redir=-1 "
        f"resp={s.proto}\n"
    ).encode()


def session_db(session: Session) -> int:
    return session.db


def session_user(session: Session) -> str:
    """The client's ACL user (client.users), `default` until it AUTHs as another."""
    return session.user.name


def client_info(args: list[bytes], session: Session, view: ServerView) -> bytes:
    row = view.client_row(session.client_id)
    return encode_bulk(client_line(row) if row is not None else b"")


def client_list(args: list[bytes], session: Session, view: ServerView) -> bytes:
    rows = view.client_rows()
    if len(args) == 4 and args[2].lower() == b"type":
        kind = args[3].lower()
        if kind not in _TYPES:
            return errors.unknown_client_type(args[3])
        rows = [r for r in rows if r.kind == kind]
    elif len(args) > 3 and args[2].lower() == b"id":
        ids = _ids(args[3:], lowest=None)
        if ids is None:
            return errors.invalid_client_id()
        rows = [r for r in rows if r.session.client_id in ids]
    elif len(args) != 2:
        return errors.syntax_error()
    rows.sort(key=lambda r: r.session.client_id)
    return encode_bulk(b"".join(client_line(r) for r in rows))


def _ids(words: Iterable[bytes], lowest: int | None = 1) -> set[int] | None:
    ids = set()
    for word in words:
        try:
            value = int(word)
        except ValueError:
            return None
        if lowest is not None and value < lowest:
            return None
        ids.add(value)
    return ids


# A CLIENT KILL filter: what of a client it compares, and the values it accepts.
Filter = tuple[Callable[[ClientRow], bytes], frozenset[bytes]]
_FIELDS: dict[bytes, Callable[[ClientRow], bytes]] = {
    b"id": lambda r: b"%d" % r.session.client_id,
    b"type": lambda r: r.kind,
    b"addr": lambda r: r.session.peer.encode(),
    b"laddr": lambda r: r.laddr.encode(),
    b"user": lambda r: session_user(r.session).encode(),
}


def client_kill(args: list[bytes], session: Session, view: ServerView) -> bytes:
    """CLIENT KILL addr (old form: +OK or 'No such client') or by filters (a count)."""
    if len(args) == 3:
        victims = [r for r in view.client_rows() if r.session.peer.encode() == args[2]]
        if not victims:
            return errors.no_such_client()
        _kill(victims, session, view)
        return OK
    filters, skipme = _kill_filters(args[2:])
    if isinstance(filters, bytes):
        return filters
    victims = [
        r
        for r in view.client_rows()
        if all(field(r) in values for field, values in filters)
        and not (skipme and r.session is session)
    ]
    _kill(victims, session, view)
    return encode_int(len(victims))


def _kill(victims: list[ClientRow], session: Session, view: ServerView) -> None:
    for row in victims:
        if row.session is session:
            session.closing = True  # its own: after this reply, as Redis does
        else:
            view.kill_client(row.session.client_id)


def _kill_filters(words: list[bytes]) -> tuple[list[Filter] | bytes, bool]:
    if len(words) % 2:
        return errors.syntax_error(), True
    filters: list[Filter] = []
    skipme = True
    for name, value in zip(words[::2], words[1::2], strict=True):
        option = name.lower()
        if option == b"skipme":
            if value.lower() not in (b"yes", b"no"):
                return errors.syntax_error(), True
            skipme = value.lower() == b"yes"
            continue
        field = _FIELDS.get(option)
        if field is None:
            return errors.syntax_error(), True
        if option == b"id":
            ids = _ids([value])
            if ids is None:
                return errors.client_id_not_positive(), True
            value = b"%d" % ids.pop()
        elif option == b"type":
            if value.lower() not in _TYPES:
                return errors.unknown_client_type(value), True
            value = value.lower()
            if value == b"slave":
                value = b"replica"
        filters.append((field, frozenset({value})))
    return filters, skipme


def client_unblock(args: list[bytes], session: Session, view: ServerView) -> bytes:
    """CLIENT UNBLOCK id [TIMEOUT|ERROR]: 1 if that client of the proxy was blocked."""
    try:
        client_id = int(args[2])
    except ValueError:
        return errors.not_integer()
    how = args[3].lower() if len(args) > 3 else b"timeout"
    if len(args) > 4 or how not in (b"timeout", b"error"):
        return errors.unblock_reason()
    return encode_int(int(view.unblock_client(client_id, how == b"error")))
