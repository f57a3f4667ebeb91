"""Every error text a client can see from the proxy itself, in one place.

Each function returns the encoded RESP error line. Backend errors (WRONGTYPE...) never pass
through here: they are forwarded byte for byte. At the end, what operators see: ConfigError when
a config file is rejected, and the texts (str) of the backend ACL check and the backfill job.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def _err(text: str) -> bytes:
    return _err_bytes(text.encode())


def _err_bytes(text: bytes) -> bytes:
    """For texts that quote a client's own bytes (any encoding); newlines are flattened."""
    return b"-" + text.replace(b"\r", b" ").replace(b"\n", b" ") + b"\r\n"


def protocol_error(detail: str) -> bytes:
    return _err(f"ERR Protocol error: {detail}")


def backend_unavailable(name: str, addr: str, reason: str) -> bytes:
    return _err(f"ERR backend {name} ({addr}) is unavailable: {reason}")


def backend_timeout(name: str, addr: str, timeout_ms: int) -> bytes:
    return _err(f"ERR backend {name} ({addr}) timed out after {timeout_ms} ms")


def local_resources(name: str, addr: str, reason: str) -> bytes:
    return _err(
        f"ERR shardproxy could not open a connection to backend {name} ({addr}): {reason} "
        "(the proxy's own limit, not the backend's)"
    )


def notbusy() -> bytes:
    """Redis's reply to SCRIPT KILL / FUNCTION KILL when no backend runs a script."""
    return _err("NOTBUSY No scripts in execution right now.")


def noscript() -> bytes:
    """Redis's own reply to an EVALSHA of an unknown script: the client sends EVAL instead."""
    return _err("NOSCRIPT No matching script. Please use EVAL.")


def cross_backend(command: str) -> bytes:
    return _err(
        f"CROSSSLOT keys in '{command}' map to different backends; put them on one backend "
        "with a hash tag, e.g. {user1}:a and {user1}:b"
    )


def denied(command: str) -> bytes:
    return _err(f"ERR command '{command}' is not allowed through shardproxy")


def not_supported_yet(command: str) -> bytes:
    return _err(
        f"ERR command '{command}' is not supported by shardproxy yet "
        "(transactions, blocking commands and pub/sub need a pinned connection)"
    )


def execabort() -> bytes:
    return _err("EXECABORT Transaction discarded because of previous errors.")


def nested_multi() -> bytes:
    return _err("ERR MULTI calls can not be nested")


def watch_in_multi() -> bytes:
    return _err("ERR WATCH inside MULTI is not allowed")


def reply_over_budget(size: int) -> bytes:
    return _err(
        f"ERR reply of {size} bytes is over this client's memory budget; raise "
        "client.max_output_buffer_bytes in the proxy config, or ask for less at once"
    )


def dedicated_exhausted(backend: str, purpose: str, limit: int) -> bytes:
    return _err(
        f"ERR backend {backend} has {limit} {purpose} connections open already, its limit; "
        "retry later or raise the limit in the proxy config"
    )


def flush_disabled(command: str) -> bytes:
    return _err(f"ERR '{command}' is disabled; set allow_flush: true in the proxy config")


def noauth() -> bytes:
    return _err("NOAUTH Authentication required.")


def hello_noauth() -> bytes:
    return _err(
        "NOAUTH HELLO must be called with the client already authenticated, otherwise the "
        "HELLO AUTH <user> <pass> option can be used to authenticate the client and "
        "select the RESP protocol version at the same time"
    )


def wrongpass() -> bytes:
    return _err("WRONGPASS invalid username-password pair or user is disabled.")


def noperm_command(command: str) -> bytes:
    """Redis 7.0's text; `command` is 'client|setname' for a subcommand."""
    return _err(f"NOPERM this user has no permissions to run the '{command}' command")


def noperm_keys() -> bytes:
    return _err("NOPERM this user has no permissions to access one of the keys used as arguments")


def client_address_refused(peer: str) -> bytes:
    return _err(f"ERR shardproxy does not accept clients from {peer} (client.allow_cidrs)")


def admin_unauthorized() -> str:
    return "missing or wrong admin token (Authorization: Bearer <admin.token>)"


def admin_bad_origin(origin: str) -> str:
    return f"cross-origin request refused (Origin {origin!r} is not this admin port)"


def auth_not_configured() -> bytes:
    return _err(
        "ERR AUTH <password> called without any password configured for the default user. "
        "Are you sure your configuration is correct?"
    )


def wrong_arity(command: str) -> bytes:
    """Redis 7's exact text; `command` is 'client|setname' for a subcommand."""
    return _err(f"ERR wrong number of arguments for '{command}' command")


def unknown_command(name: bytes, shown: bytes) -> bytes:
    """Redis 7's exact text; `shown` is the first arguments, each quoted and followed by a space."""
    return _err_bytes(b"ERR unknown command '%s', with args beginning with: %s" % (name, shown))


def unknown_subcommand(sub: bytes, container: bytes) -> bytes:
    return _err_bytes(b"ERR unknown subcommand '%s'. Try %s HELP." % (sub, container))


def invalid_client_name() -> bytes:
    return _err("ERR Client names cannot contain spaces, newlines or special characters.")


def config_set_not_allowed(name: str) -> bytes:
    return _err(
        f"ERR CONFIG SET of '{name}' is not allowed through shardproxy; the operator may allow "
        "it with allow_config_set in the proxy config"
    )


def not_allowed_in_multi() -> bytes:
    return _err("ERR Command not allowed inside a transaction")


def unblock_reason() -> bytes:
    return _err("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR")


def unknown_client_type(name: bytes) -> bytes:
    return _err_bytes(b"ERR Unknown client type '%s'" % name)


def invalid_client_id() -> bytes:
    return _err("ERR Invalid client ID")


def client_id_not_positive() -> bytes:
    return _err("ERR client-id should be greater than 0")


def no_such_client() -> bytes:
    return _err("ERR No such client")


def unrecognized_option(option: bytes) -> bytes:
    return _err_bytes(b"ERR Unrecognized option '%s'" % option)


def select_db() -> bytes:
    return _err("ERR DB index is out of range")


def too_few_databases(wanted: int, short: list[tuple[str, int]]) -> str:
    """At start: backends with fewer databases than the config's `databases`."""
    found = ", ".join(f"{addr} has {n}" for addr, n in short)
    return (
        f"databases: {wanted} in the config, but {found}; lower `databases` or raise the "
        "backends' own `databases` setting"
    )


def select_while_watching() -> bytes:
    return _err(
        "ERR SELECT while WATCHing is not supported by shardproxy (the watched keys stay in "
        "the database they were watched in); UNWATCH or EXEC first"
    )


def copy_db() -> bytes:
    return _err("ERR COPY ... DB is not supported by shardproxy; SELECT the database instead")


def swapdb() -> bytes:
    return _err(
        "ERR SWAPDB is not allowed through shardproxy: the databases are spread over many "
        "backends and cannot be swapped atomically"
    )


def syntax_error() -> bytes:
    return _err("ERR syntax error")


def not_int_range(low: int, high: int) -> bytes:
    """Redis's error for an integer argument outside a C int (getRangeLongFromObjectOrReply)."""
    return _err(f"ERR value is out of range, value must between {low} and {high}")


def not_integer() -> bytes:
    return _err("ERR value is not an integer or out of range")


def invalid_cursor() -> bytes:
    return _err("ERR invalid cursor")


def noproto() -> bytes:
    return _err("NOPROTO unsupported protocol version")


def max_clients() -> bytes:
    return _err("ERR max number of clients reached")


def reserved_key(command: str) -> bytes:
    return _err(
        f"ERR '{command}' refused: keys under '__shardproxy:' are reserved for shardproxy's "
        "own migration state"
    )


def sort_pattern() -> bytes:
    return _err(
        "ERR SORT with BY or GET patterns is not supported by shardproxy: the pattern's keys "
        "may live on other backends (BY NOSORT and GET # are fine)"
    )


class ConfigError(Exception):
    """A config that cannot be used. `errors` lists every problem, each "dotted.path: message"
    (whole-file problems use the file name as the path); str() joins them with "; "."""

    errors: tuple[str, ...]
    source: str | None  # the file (or "<string>") the config came from, when known

    def __init__(self, errors: Iterable[str] | str, source: str | None = None) -> None:
        self.errors = (errors,) if isinstance(errors, str) else tuple(errors)
        self.source = source
        super().__init__("; ".join(self.errors))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.errors, self.source))


# --- operator-visible texts (logs, /status, the CLI) ----------------------------------------


def acl_no_answer(timeout_s: float) -> str:
    return f"no answer within {timeout_s:g} s"


def acl_auth_failed(reply: object) -> str:
    return f"AUTH failed: {reply}"


def acl_admin_denied(eval_reply: object) -> str:
    return f"EVAL refused ({eval_reply}); ACL DRYRUN refused too, so @admin is denied"


def acl_unchecked(eval_reply: object, dryrun_reply: object) -> str:
    return f"EVAL failed ({eval_reply}) and ACL DRYRUN failed ({dryrun_reply})"


def acl_too_broad(name: str, addr: str, verdict: str, mode: str) -> str:
    """The log line for a backend whose user is not as `shardproxy acl` prints."""
    return (
        f"backend {name} ({addr}): the proxy's backend user {verdict}; scripts"
        " (EVAL, FCALL) can run what the proxy refuses clients. Create it with `shardproxy acl"
        f" -c FILE --user NAME` (backend.acl_check: {mode})"
    )


def acl_refused(bad: Iterable[str]) -> str:
    """Why backend.acl_check: refuse refuses: `bad` holds "addr verdict" per backend."""
    return (
        "backend.acl_check is refuse and the backend user's ACL does not match "
        "`shardproxy acl`: " + "; ".join(bad)
    )


def lease_lost(owner: str) -> str:
    """A backfill stopped because another runner holds its lease ("" when unknown)."""
    return f"lost the lease to {owner or 'another runner'}"


def blocking_in_migration(command: str) -> bytes:
    return _err(
        f"ERR '{command}' with BLOCK is refused while a migration writes both pools: what it "
        "takes on one side cannot be mirrored on the other; retry after the migration, or "
        "without BLOCK"
    )


def exec_without_multi() -> bytes:
    return _err("ERR EXEC without MULTI")


def discard_without_multi() -> bytes:
    return _err("ERR DISCARD without MULTI")


def not_in_transaction(command: str) -> bytes:
    return _err(
        f"ERR '{command}' cannot be part of a transaction or run while WATCHing through "
        "shardproxy (a transaction runs on one backend, on a connection the proxy shares or "
        "pins); send it outside MULTI and WATCH"
    )


def subscribed_mode(command: str) -> bytes:
    """A RESP2 client with subscriptions ran another command (Redis 7.0's exact text)."""
    return _err(
        f"ERR Can't execute '{command}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT"
        " / RESET are allowed in this context"
    )


def too_many_subscriptions(limit: int) -> bytes:
    return _err(
        f"ERR too many subscriptions: a client may hold {limit} channels and patterns"
        " (client.max_subscriptions)"
    )


def subscriber_lost(client_id: int, backend: str, reason: str) -> str:
    """The log line for a subscriber closed because a backend's subscriptions ended."""
    return f"client {client_id} closed: its subscriptions on {backend} ended ({reason})"


# --- TLS (proxy/net/tls.py, proxy/net/listener.py) -------------------------------------------

TLS_ENCRYPTED_KEY = (
    "encrypted private keys are not supported: the proxy cannot ask for a passphrase"
)


def tls_file(path: str, file: str, reason: str) -> str:
    """A certificate, key or CA file that cannot be used: a config problem (start, reload)."""
    return f"{path}: cannot use {file}: {reason}"


def tls_handshake(reason: str) -> str:
    """Why a TLS connection to a backend failed (a backend's down reason)."""
    return f"TLS handshake failed: {reason}"
