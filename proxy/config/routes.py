"""The `routes:` section: prefix routes, Envoy's `prefix_routes`, checked when the config loads.

`routes: [{prefix: "rq:", pool: queues}, ...]` gives the keys (and pub/sub channels) that start
with a prefix to a pool of their own; the longest matching prefix wins, and `route` owns the rest.
Invariant: every prefix is a non-empty string given once, and every pool exists.
"""

from __future__ import annotations

from proxy.config.model import RouteConfig
from proxy.config.reader import Reader, describe


def read_routes(r: Reader, raw: object, pool_names: list[str]) -> tuple[RouteConfig, ...]:
    """The routes of a file, in file order; every problem reported with its dotted path."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        r.fail("routes", f"expected a list of {{prefix, pool}} mappings, got {describe(raw)}")
        return ()
    routes: list[RouteConfig] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(raw):
        path = f"routes[{index}]"
        route = _read_route(r, path, item, pool_names)
        if route is None:
            continue
        if route.prefix in seen:
            r.fail(
                f"{path}.prefix",
                f"duplicate prefix {route.prefix!r} (routes[{seen[route.prefix]}])",
            )
            continue
        seen[route.prefix] = index
        routes.append(route)
    return tuple(routes)


def _read_route(r: Reader, path: str, raw: object, pool_names: list[str]) -> RouteConfig | None:
    if not isinstance(raw, dict):
        r.fail(path, f"expected a mapping {{prefix, pool}}, got {describe(raw)}")
        return None
    mapping = r.section(path, raw, ("prefix", "pool"))
    prefix = pool = None
    for name in ("prefix", "pool"):
        if name not in mapping:
            r.fail(f"{path}.{name}", "required")
    if "prefix" in mapping:
        prefix = r.text(f"{path}.prefix", mapping["prefix"])
        if prefix == "":
            r.fail(f"{path}.prefix", "must not be empty (the route pool owns every other key)")
            prefix = None
    if "pool" in mapping:
        pool = r.text(f"{path}.pool", mapping["pool"])
        if pool is not None and pool_names and pool not in pool_names:
            r.fail(f"{path}.pool", f"no pool named {pool!r} (pools: {', '.join(pool_names)})")
            pool = None
    if prefix is None or pool is None:
        return None
    return RouteConfig(prefix, pool)
