#!/usr/bin/env python3
"""Generate proxy/commands/table.py from a real redis-server's COMMAND INFO and COMMAND DOCS.

The output is plain, sorted, deterministic data (no logic): proxy/commands/spec.py classifies it.
With --readme, also rewrite the README's command list between its markers, so the docs are
rendered from the same table the proxy routes with (a test fails when they drift).

    python scripts/gen_command_table.py [--port 6379] [--readme README.md]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import hiredis

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TABLE_PATH = REPO / "proxy" / "commands" / "table.py"
README_BEGIN = "<!-- commands:begin -->"
README_END = "<!-- commands:end -->"
START_TIMEOUT_S = 10.0
IO_TIMEOUT_S = 5.0

# Same layout as proxy/commands/table.py documents.
KeySpecRow = tuple[tuple[str, ...], str, int, str, str, int, int, int]
CommandRow = tuple[str, int, tuple[str, ...], int, int, int, tuple[KeySpecRow, ...], str, str]
Categories = dict[str, tuple[str, ...]]

KIND_TITLES = {
    "SINGLE": ("single key", "routed by its one key (hash tag honoured)."),
    "MULTI": ("split and merge", "split per backend, replies merged in the client's key order."),
    "SAME_BACKEND": (
        "same backend only",
        "allowed when every key maps to one backend, else a CROSSSLOT error naming hash tags.",
    ),
    "FANOUT": (
        "fan-out",
        "sent to every backend, replies merged; FLUSHDB and FLUSHALL only when the config allows.",
    ),
    "LOCAL": ("local", "answered by the proxy itself."),
    "TRANSACTION": (
        "transactions",
        "queued by the proxy, run as one block on the one backend of all their keys; "
        "WATCH pins a connection.",
    ),
    "BLOCKING": (
        "blocking",
        "each waits on a backend connection of its own (XREAD and XREADGROUP with BLOCK too); "
        "keys on one backend, else CROSSSLOT.",
    ),
    "PUBSUB": (
        "pub/sub",
        "channels by hash on the route ring, patterns on every backend (README: Pub/sub).",
    ),
    "DENIED": ("denied", "refused with an error: admin, replication, cluster, other databases."),
}


def command(sock: socket.socket, reader: Any, *args: bytes) -> Any:
    """Send one RESP2 command on `sock` and return its decoded reply."""
    sock.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
    while True:
        reply = reader.gets()
        if reply is not False:
            if isinstance(reply, hiredis.ReplyError):
                raise RuntimeError(f"{args[0]!r}: {reply}")
            return reply
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError("redis closed the connection")
        reader.feed(data)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: Sequence[Any]) -> dict[str, Any]:
    return {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


def parse_key_spec(raw: Sequence[Any]) -> KeySpecRow:
    spec = _pairs(raw)
    flags = tuple(sorted(_text(f) for f in spec["flags"]))
    begin = _pairs(spec["begin_search"])
    find = _pairs(spec["find_keys"])
    bs_type, bs = _text(begin["type"]), _pairs(begin["spec"])
    fk_type, fk = _text(find["type"]), _pairs(find["spec"])
    if bs_type == "index":
        bs_row: tuple[int, str] = (int(bs["index"]), "")
    elif bs_type == "keyword":
        bs_row = (int(bs["startfrom"]), _text(bs["keyword"]))
    else:
        bs_row = (0, "")
    if fk_type == "range":
        fk_row = (int(fk["lastkey"]), int(fk["keystep"]), int(fk["limit"]))
    elif fk_type == "keynum":
        fk_row = (int(fk["keynumidx"]), int(fk["firstkey"]), int(fk["keystep"]))
    else:
        fk_row = (0, 0, 0)
    return (flags, bs_type, *bs_row, fk_type, *fk_row)


def parse_docs(reply: Sequence[Any], into: dict[str, tuple[str, str]]) -> None:
    """COMMAND DOCS (RESP2: name, docs, ...) -> {name: (group, summary)}, subcommands too."""
    for i in range(0, len(reply), 2):
        docs = _pairs(reply[i + 1])
        into[_text(reply[i])] = (_text(docs.get("group", "")), _text(docs.get("summary", "")))
        if "subcommands" in docs:
            parse_docs(docs["subcommands"], into)


def parse_categories(reply: Sequence[Any], into: dict[str, tuple[str, ...]]) -> None:
    """COMMAND INFO entries -> {name: sorted ACL categories without '@'}, subcommands too."""
    for entry in reply:
        name = _text(entry[0]).lower()
        into[name] = tuple(sorted(_text(c).lstrip("@") for c in entry[6]))
        parse_categories(entry[9], into)


def parse_commands(
    reply: Sequence[Any], docs: dict[str, tuple[str, str]], into: list[CommandRow]
) -> None:
    """COMMAND INFO entries -> rows; subcommands become rows named "container|sub"."""
    for entry in reply:
        name = _text(entry[0]).lower()
        group, summary = docs.get(name, ("", ""))
        into.append(
            (
                name,
                int(entry[1]),
                tuple(sorted(_text(f) for f in entry[2])),
                int(entry[3]),
                int(entry[4]),
                int(entry[5]),
                tuple(parse_key_spec(s) for s in entry[8]),
                group,
                summary,
            )
        )
        parse_commands(entry[9], docs, into)


def read_server(port: int, host: str = "127.0.0.1") -> tuple[str, list[CommandRow]]:
    """(redis version, sorted command rows) of the server at host:port."""
    version, rows, _categories = read_server_full(port, host)
    return version, rows


def read_server_full(
    port: int, host: str = "127.0.0.1"
) -> tuple[str, list[CommandRow], Categories]:
    """(redis version, sorted command rows, ACL categories by name) of the server at host:port."""
    with socket.create_connection((host, port), timeout=IO_TIMEOUT_S) as sock:
        reader = hiredis.Reader()
        info = _text(command(sock, reader, b"INFO", b"server"))
        version = next(
            line.split(":", 1)[1].strip()
            for line in info.splitlines()
            if line.startswith("redis_version:")
        )
        docs: dict[str, tuple[str, str]] = {}
        parse_docs(command(sock, reader, b"COMMAND", b"DOCS"), docs)
        rows: list[CommandRow] = []
        info = command(sock, reader, b"COMMAND", b"INFO")
        parse_commands(info, docs, rows)
        categories: dict[str, tuple[str, ...]] = {}
        parse_categories(info, categories)
    rows.sort(key=lambda row: row[0])
    return version, rows, dict(sorted(categories.items()))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            return bool(command(sock, hiredis.Reader(), b"PING") == b"PONG")
    except (OSError, RuntimeError):
        return False


@contextlib.contextmanager
def throwaway_server(binary: str = "redis-server") -> Iterator[int]:
    """A redis-server on a free loopback port, with no persistence; yields its port."""
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="gen-command-table-")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    args += ["no", "--dir", workdir, "--daemonize", "no", "--loglevel", "warning"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers_ping(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{binary} did not start on port {port}")
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def render_table(version: str, rows: Sequence[CommandRow], categories: Categories) -> str:
    """The text of proxy/commands/table.py for `rows` and `categories` read from redis `version`."""
    out = [
        f"# Generated by scripts/gen_command_table.py from redis {version} "
        "(COMMAND INFO, COMMAND DOCS).",
        "# Do not edit: rerun `python scripts/gen_command_table.py --readme README.md` instead.",
        '"""Redis\'s own command metadata as plain data; proxy/commands/spec.py classifies it."""',
        "",
        "from typing import Final, TypeAlias",
        "",
        "# A key spec: (flags, begin_search type, index or startfrom, keyword,",
        "#   find_keys type, lastkey or keynumidx, keystep or firstkey, limit or keystep)",
        "KeySpecRow: TypeAlias = tuple[tuple[str, ...], str, int, str, str, int, int, int]",
        "# A command; subcommands are named 'container|sub':",
        "#   (name, arity, flags, first key, last key, key step, key specs, group, summary)",
        "CommandRow: TypeAlias = tuple[",
        "    str, int, tuple[str, ...], int, int, int, tuple[KeySpecRow, ...], str, str",
        "]",
        "",
        f"REDIS_VERSION: Final = {version!r}",
        "",
        "COMMANDS: Final[tuple[CommandRow, ...]] = (",
    ]
    for name, arity, flags, first, last, step, specs, group, summary in rows:
        head = f"    ({name!r}, {arity}, {flags!r}, {first}, {last}, {step},"
        if specs:
            out.append(head + " (")
            out.extend(f"        {spec!r}," for spec in specs)
            out.append(f"    ), {group!r}, {summary!r}),")
        else:
            out.append(f"{head} (), {group!r}, {summary!r}),")
    out.append(")")
    out += [
        "",
        "# ACL categories of every command and subcommand (COMMAND INFO), without the '@':",
        "# proxy/commands/acl.py builds the backend user's ACL rules from them.",
        "ACL_CATEGORIES: Final[dict[str, tuple[str, ...]]] = {",
    ]
    out.extend(f"    {name!r}: {cats!r}," for name, cats in categories.items())
    out.append("}")
    return "\n".join(out) + "\n"


def render_readme_block(rows: Sequence[CommandRow], version: str) -> str:
    """The README's command list: per kind, its behaviour and the lowercase command names."""
    from proxy.commands import spec as commands

    by_kind: dict[str, list[str]] = {kind: [] for kind in KIND_TITLES}
    containers = {row[0].split("|")[0] for row in rows if "|" in row[0]}
    for spec in commands.build_specs(rows):
        if spec.name in containers and not spec.arity_ok(1):
            continue  # reachable only through its subcommands, which are listed
        by_kind[spec.kind.name].append(spec.name.replace("|", " "))
    lines = [
        f"Generated from redis {version}'s command table by "
        "`scripts/gen_command_table.py --readme README.md`; do not edit by hand.",
    ]
    for kind, names in by_kind.items():
        title, behaviour = KIND_TITLES[kind]
        lines += ["", f"**{title}** ({len(names)}): {behaviour}  ", ", ".join(sorted(names))]
    return "\n".join(lines)


def replace_readme_block(text: str, block: str) -> str:
    head, sep, rest = text.partition(README_BEGIN)
    _, sep2, tail = rest.partition(README_END)
    if not sep or not sep2:
        raise ValueError(f"README has no {README_BEGIN} ... {README_END} block")
    return f"{head}{README_BEGIN}\n{block}\n{README_END}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, help="read a running redis-server on this port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--redis-server", default="redis-server", help="binary to start")
    parser.add_argument("--output", type=Path, default=TABLE_PATH)
    parser.add_argument("--readme", type=Path, help="also rewrite this README's command list")
    opts = parser.parse_args(argv)
    if opts.port:
        version, rows, categories = read_server_full(opts.port, opts.host)
    else:
        with throwaway_server(opts.redis_server) as port:
            version, rows, categories = read_server_full(port)
    opts.output.write_text(render_table(version, rows, categories))
    print(f"wrote {opts.output}: {len(rows)} commands from redis {version}")
    if opts.readme:
        text = opts.readme.read_text()
        from proxy.commands.spec import EXTRA_ROWS

        block = render_readme_block([*rows, *EXTRA_ROWS], version)
        opts.readme.write_text(replace_readme_block(text, block))
        print(f"rewrote the command list in {opts.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
