"""INFO sections the proxy takes from its backends and sums, pure.

`INFO memory` and `INFO stats` describe the fleet: counters and sizes are summed over the
backends, ratios and percentages averaged, `*_human` fields recomputed from their sums, the
machine-wide and latest-event figures the largest, and text fields (maxmemory_policy,
mem_allocator) the first backend's. `# Keyspace` is summed by commands.local.sum_keyspace.
"""

from __future__ import annotations

from collections.abc import Sequence

# Sections answered from the backends, in Redis's INFO order, and those INFO's default includes.
BACKEND_SECTIONS = ("memory", "stats", "keyspace")
_LARGEST = frozenset({"total_system_memory", "latest_fork_usec"})
_UNITS = ("K", "M", "G", "T", "P")


def backend_sections(args: Sequence[bytes]) -> list[str]:
    """The sections of BACKEND_SECTIONS that INFO with these arguments asks for."""
    wanted = {a.lower().decode(errors="replace") for a in args[1:]}
    if not wanted or wanted & {"all", "everything", "default"}:
        return list(BACKEND_SECTIONS)
    return [s for s in BACKEND_SECTIONS if s in wanted]


def parse_sections(text: bytes) -> dict[str, list[tuple[str, str]]]:
    """An INFO text as {lowercase section title: [(field, value)]}."""
    sections: dict[str, list[tuple[str, str]]] = {}
    fields: list[tuple[str, str]] | None = None
    for raw in text.decode(errors="replace").splitlines():
        if raw.startswith("# "):
            fields = sections.setdefault(raw[2:].strip().lower(), [])
        elif fields is not None and ":" in raw:
            name, _, value = raw.partition(":")
            fields.append((name, value))
    return sections


def sum_section(title: str, texts: Sequence[bytes]) -> bytes:
    """Section `title` ("memory", "stats") summed over the backends' INFO texts; b"" if none
    of them has it."""
    per_backend = [parse_sections(t).get(title) for t in texts]
    present = [dict(f) for f in per_backend if f is not None]
    if not present:
        return b""
    order = list(dict.fromkeys(name for f in per_backend if f for name, _ in f))
    merged = {name: _combine(name, [p[name] for p in present if name in p]) for name in order}
    for name in order:
        base = name.removesuffix("_human")
        if base != name and base in merged:
            merged[name] = _human(merged[base])
    lines = [f"# {title.capitalize()}", *(f"{k}:{v}" for k, v in merged.items())]
    return ("\r\n".join(lines) + "\r\n").encode()


def _combine(name: str, values: list[str]) -> str:
    numbers = [_number(v.removesuffix("%")) for v in values]
    if any(n is None for n in numbers):
        return values[0]  # text: the first backend's
    nums = [n for n in numbers if n is not None]
    percent = values[0].endswith("%")
    if percent or name.endswith(("_ratio", "_perc")):
        mean = sum(nums) / len(nums)
        return f"{mean:.2f}" + ("%" if percent else "")
    total = max(nums) if name in _LARGEST else sum(nums)
    if all("." not in v for v in values):
        return str(int(total))
    return f"{total:.2f}"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _human(value: str) -> str:
    """Redis's bytesToHuman: 1023B, 1.06M ..."""
    n = float(value)
    if n < 1024:
        return f"{int(n)}B"
    for unit in _UNITS:
        n /= 1024
        if n < 1024 or unit == _UNITS[-1]:
            return f"{n:.2f}{unit}"
    raise AssertionError("unreachable")
