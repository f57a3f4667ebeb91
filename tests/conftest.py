from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Cluster, Layout
from tests.support.processes import RedisServer, redis_servers
from tests.support.tls import tls_backends, tls_ca  # noqa: F401  (fixtures)


@pytest.fixture(scope="session")
def backends3() -> Iterator[list[RedisServer]]:
    """Three real redis-server processes shared by a session's tests (flushed per test by users)."""
    with redis_servers(3) as servers:
        yield servers


@pytest.fixture
def redis1() -> Iterator[RedisServer]:
    with redis_servers(1) as servers:
        yield servers[0]


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Any]:
    """make(layout, **kwargs): a Cluster on a config file in tmp_path, stopped after the test."""
    made: list[Cluster] = []

    def make(layout: Layout, **kwargs: Any) -> Cluster:
        cluster = Cluster(layout, tmp_path / "proxy.yaml", **kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


@pytest.fixture(scope="module")
def reference() -> Iterator[RedisServer]:
    """A plain redis-server of the module's own: what Redis answers, to compare the proxy with."""
    with redis_servers(1) as found:
        yield found[0]


@pytest.fixture(scope="module")
def five_servers() -> Iterator[list[RedisServer]]:
    """Five real redis-server processes for a module's migration tests (two pools)."""
    with redis_servers(5) as five:
        yield five


@pytest.fixture
def servers5(five_servers: list[RedisServer]) -> list[RedisServer]:
    """The module's five servers, flushed before each test."""
    for s in five_servers:
        with s.client() as c:
            c.flushall()
    return five_servers


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test compiled modules older than their source: the edit would not be tested."""
    from proxy.build_info import stale

    if old := stale():
        raise pytest.UsageError(
            f"compiled modules older than their source: {', '.join(old)}; rebuild them"
            " (scripts/build.sh) or remove them (scripts/build.sh --clean)"
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """pure_only tests run on the pure build only (scripts/test.sh runs them there)."""
    from proxy.build_info import BUILD

    if BUILD == "compiled":
        skip = pytest.mark.skip(reason="pure_only: run on the pure build")
        for item in items:
            if item.get_closest_marker("pure_only"):
                item.add_marker(skip)
