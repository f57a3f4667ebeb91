"""The cache defences' config sections: hotkeys, bigkeys, hotcache, coalesce, ttl_jitter.

Read by proxy/config/schema.py like every other section (unknown keys, wrong types and bad
ranges are reported with their dotted path); every defence is off by default except hot-key
sampling, which is cheap enough to leave on (README "Protecting the cache").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from proxy.config.reader import Reader, describe, join_path

MIB: Final = 1024 * 1024
MAX_PATTERN_LEN: Final = 1024


@dataclass(frozen=True, slots=True)
class HotKeysConfig:
    enabled: bool = True
    sample_every: int = 64  # one request in this many is recorded (1: every request)
    top: int = 32  # keys reported per pool
    capacity: int = 512  # keys tracked per pool and sub-window (space-saving counters)
    window_s: float = 60.0  # the sliding window the rates are measured over
    hot_rate_per_s: float = 100.0  # a tracked key this busy is hot (hotcache, coalesce)
    hash_names: bool = False  # report keyed hashes instead of key names
    hash_secret: str | None = field(default=None, repr=False)  # the hashes' key (fleet-wide)


@dataclass(frozen=True, slots=True)
class BigKeysConfig:
    threshold_bytes: int = 0  # requests and replies this big are counted; 0: off
    top: int = 32  # the largest seen, kept


@dataclass(frozen=True, slots=True)
class HotCacheConfig:
    enabled: bool = False
    ttl_ms: int = 1000  # the staleness bound for writes that do not pass this proxy
    max_bytes: int = 64 * MIB
    patterns: tuple[str, ...] = ()  # globs (as Redis KEYS); a key must match one


@dataclass(frozen=True, slots=True)
class CoalesceConfig:
    enabled: bool = False


@dataclass(frozen=True, slots=True)
class JitterRule:
    pattern: str
    percent: float  # up to this much extra TTL, uniformly at random


@dataclass(frozen=True, slots=True)
class DefencesConfig:
    hotkeys: HotKeysConfig = HotKeysConfig()
    bigkeys: BigKeysConfig = BigKeysConfig()
    hotcache: HotCacheConfig = HotCacheConfig()
    coalesce: CoalesceConfig = CoalesceConfig()
    ttl_jitter: tuple[JitterRule, ...] = ()


SECTIONS: Final = ("hotkeys", "bigkeys", "hotcache", "coalesce", "ttl_jitter")


def read_defences(r: Reader, top: dict[str, object]) -> DefencesConfig:
    d = HotKeysConfig()
    raw = r.section("hotkeys", top.get("hotkeys"), HotKeysConfig.__slots__)
    hotkeys = HotKeysConfig(
        enabled=_bool(r, "hotkeys", raw, "enabled", d.enabled),
        sample_every=_int(r, "hotkeys", raw, "sample_every", d.sample_every, 1, 1 << 20),
        top=_int(r, "hotkeys", raw, "top", d.top, 1, 10_000),
        capacity=_int(r, "hotkeys", raw, "capacity", d.capacity, 1, 1_000_000),
        window_s=_float(r, "hotkeys", raw, "window_s", d.window_s, 1.0),
        hot_rate_per_s=_float(r, "hotkeys", raw, "hot_rate_per_s", d.hot_rate_per_s, 0.0),
        hash_names=_bool(r, "hotkeys", raw, "hash_names", d.hash_names),
        hash_secret=r.secret("hotkeys.hash_secret", raw.get("hash_secret")),
    )
    if hotkeys.capacity < hotkeys.top:
        r.fail("hotkeys.capacity", f"must be >= hotkeys.top ({hotkeys.top})")
    b = BigKeysConfig()
    raw = r.section("bigkeys", top.get("bigkeys"), BigKeysConfig.__slots__)
    bigkeys = BigKeysConfig(
        threshold_bytes=_int(r, "bigkeys", raw, "threshold_bytes", b.threshold_bytes, 0, None),
        top=_int(r, "bigkeys", raw, "top", b.top, 1, 10_000),
    )
    c = HotCacheConfig()
    raw = r.section("hotcache", top.get("hotcache"), HotCacheConfig.__slots__)
    hotcache = HotCacheConfig(
        enabled=_bool(r, "hotcache", raw, "enabled", c.enabled),
        ttl_ms=_int(r, "hotcache", raw, "ttl_ms", c.ttl_ms, 1, 3_600_000),
        max_bytes=_int(r, "hotcache", raw, "max_bytes", c.max_bytes, 1024, None),
        patterns=_patterns(r, "hotcache.patterns", raw.get("patterns", [])),
    )
    if hotcache.enabled and not hotcache.patterns:
        r.fail("hotcache.patterns", "required when hotcache.enabled (which keys may be cached)")
    raw = r.section("coalesce", top.get("coalesce"), CoalesceConfig.__slots__)
    coalesce = CoalesceConfig(_bool(r, "coalesce", raw, "enabled", False))
    for name, on in (("hotcache", hotcache.enabled), ("coalesce", coalesce.enabled)):
        if on and not hotkeys.enabled:
            r.fail(f"{name}.enabled", "needs hotkeys.enabled: it acts on hot keys only")
    return DefencesConfig(hotkeys, bigkeys, hotcache, coalesce, _jitter(r, top.get("ttl_jitter")))


def _bool(r: Reader, path: str, raw: dict[str, object], name: str, default: bool) -> bool:
    return r.boolean(join_path(path, name), raw[name], default) if name in raw else default


def _int(
    r: Reader, path: str, raw: dict[str, object], name: str, d: int, low: int, high: int | None
) -> int:
    return r.integer(join_path(path, name), raw[name], d, low, high) if name in raw else d


def _float(r: Reader, path: str, raw: dict[str, object], name: str, d: float, low: float) -> float:
    return r.number(join_path(path, name), raw[name], d, low, None) if name in raw else d


def _patterns(r: Reader, path: str, raw: object) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        r.fail(path, f"expected a list of glob patterns, got {describe(raw)}")
        return ()
    found = (_pattern(r, f"{path}[{i}]", item) for i, item in enumerate(raw))
    return tuple(p for p in found if p is not None)


def _pattern(r: Reader, path: str, raw: object) -> str | None:
    text = r.text(path, raw)
    if text is not None and not 0 < len(text) <= MAX_PATTERN_LEN:
        r.fail(path, f"must be 1..{MAX_PATTERN_LEN} characters")
        return None
    return text


def _jitter(r: Reader, raw: object) -> tuple[JitterRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        r.fail("ttl_jitter", f"expected a list of {{pattern, percent}}, got {describe(raw)}")
        return ()
    rules: list[JitterRule] = []
    for i, item in enumerate(raw):
        path = f"ttl_jitter[{i}]"
        entry = r.section(path, item, ("pattern", "percent"))
        for name in ("pattern", "percent"):
            if name not in entry and isinstance(item, dict):
                r.fail(join_path(path, name), "required")
        if "pattern" not in entry or "percent" not in entry:
            continue
        pattern = _pattern(r, join_path(path, "pattern"), entry["pattern"])
        percent = r.number(join_path(path, "percent"), entry["percent"], -1.0, 0.0, 100.0)
        if pattern is not None and percent >= 0:
            rules.append(JitterRule(pattern, percent))
    return tuple(rules)
