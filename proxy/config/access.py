"""The config's access sections: the admin port's address and token (`admin`), client ACL users
(`client.users`) and the client allow list (`client.allow_cidrs`). Read by proxy/config/schema.py.

Invariant: a non-loopback admin address comes with a token, or with allow_insecure said aloud.
User passwords are kept only as SHA-256 digests; their command and key rules are checked against
the command table by proxy/commands/users.py (this layer does not know the commands).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import fields
from typing import Any, Final

from proxy.config.model import DEFAULT_ADMIN, Address, AdminAuth, UserConfig
from proxy.config.reader import Reader, describe


def read_admin(r: Reader, raw: object) -> tuple[Address | None, AdminAuth]:
    """`admin: host:port`, null (no admin port), or {addr, token, token_required_for_get,
    allow_insecure}. A non-loopback address needs a token unless allow_insecure says not."""
    if raw is None or isinstance(raw, (str, Address)):
        addr = raw if isinstance(raw, Address) else _address(r, "admin", raw)
        auth = AdminAuth()
    else:
        mapping = r.section("admin", raw, ("addr", *_ADMIN_FLAGS, "token"))
        addr = _address(r, "admin.addr", mapping.get("addr", str(DEFAULT_ADMIN)))
        token = r.secret("admin.token", mapping.get("token"))
        flags = {
            name: r.boolean(f"admin.{name}", mapping[name], False)
            for name in _ADMIN_FLAGS
            if name in mapping
        }
        auth = AdminAuth(token, **flags)
    if auth.token_required_for_get and auth.token is None:
        r.fail("admin.token_required_for_get", "needs admin.token")
    if (
        addr is not None
        and auth.token is None
        and not auth.allow_insecure
        and not is_loopback(addr.host)
    ):
        r.fail(
            "admin.token",
            f"required: the admin port {addr} is not on a loopback address, and anyone who"
            " reaches it could POST /reload; set admin.token (e.g. ${SHARDPROXY_ADMIN_TOKEN})"
            " or, on a trusted network only, admin.allow_insecure: true",
        )
    return addr, auth


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost`; any other name or address counts as reachable."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _user_name(r: Reader, path: str, value: object) -> str:
    name = r.text(path, value) or ""
    if not re.fullmatch(r"[^\s<>~&@+\-#%][^\s]*", name):
        r.fail(path, f"must be a name without spaces, not starting with <>~&@+-#%, got {name!r}")
    elif name == "default":
        r.fail(path, "the default user is client.password's: name this user otherwise")
    return name


def _words(r: Reader, path: str, value: object) -> tuple[str, ...]:
    """Rules as one string ("+@read -@all") or a list of strings, split at spaces."""
    items = value if isinstance(value, list) else [value]
    words: list[str] = []
    for index, item in enumerate(items):
        item_path = f"{path}[{index}]" if isinstance(value, list) else path
        text = r.text(item_path, item)
        words.extend((text or "").split())
    return tuple(words)


_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}")


def _user_password(r: Reader, path: str, mapping: dict[str, object]) -> bytes:
    """The SHA-256 digest of `password`, or `password_sha256` itself (exactly one is given)."""
    if ("password" in mapping) == ("password_sha256" in mapping):
        r.fail(path, "give exactly one of password and password_sha256")
        return b""
    if "password" in mapping:
        password = r.secret(f"{path}.password", mapping["password"])
        if password is None:
            r.fail(f"{path}.password", "must not be empty")
            return b""
        return hashlib.sha256(password.encode()).digest()
    text = r.secret(f"{path}.password_sha256", mapping["password_sha256"]) or ""
    if not _HEX64.fullmatch(text):
        r.fail(f"{path}.password_sha256", "must be 64 hex digits (sha256sum of the password)")
        return b""
    return bytes.fromhex(text)


def read_users(r: Reader, path: str, value: object, default: Any) -> Any:
    if value is None:
        return ()
    if not isinstance(value, list):
        r.fail(path, f"expected a list of users, got {describe(value)}")
        return ()
    users: list[UserConfig] = []
    for index, item in enumerate(value):
        item_path = f"{path}[{index}]"
        allowed = ("name", "password", "password_sha256", "commands", "keys")
        mapping = r.section(item_path, item, allowed)
        if not isinstance(item, dict):
            continue
        if "name" not in mapping:
            r.fail(f"{item_path}.name", "required")
            continue
        name = _user_name(r, f"{item_path}.name", mapping["name"])
        if any(u.name == name for u in users):
            r.fail(f"{item_path}.name", f"duplicate user {name!r}")
        digest = _user_password(r, item_path, mapping)
        commands = _words(r, f"{item_path}.commands", mapping.get("commands", ""))
        keys = _words(r, f"{item_path}.keys", mapping.get("keys", ""))
        users.append(UserConfig(name, digest, commands, keys))
    return tuple(users)


def read_cidrs(r: Reader, path: str, value: object, default: Any) -> Any:
    if value is None:
        return ()
    if not isinstance(value, list):
        r.fail(path, f'expected a list of networks ["127.0.0.0/8", ...], got {describe(value)}')
        return ()
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for index, item in enumerate(value):
        text = r.text(f"{path}[{index}]", item)
        if text is None:
            continue
        try:
            networks.append(ipaddress.ip_network(text.strip()))
        except ValueError as exc:
            r.fail(f"{path}[{index}]", f"not a network ({exc})")
    return tuple(networks)


_ADMIN_FLAGS: Final = tuple(f.name for f in fields(AdminAuth) if f.name != "token")


def _address(r: Reader, path: str, value: object) -> Address | None:
    if value is None:
        return None
    host_port = r.address(path, value, allow_port_zero=True)
    return DEFAULT_ADMIN if host_port is None else Address(*host_port)
