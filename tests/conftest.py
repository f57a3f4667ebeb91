from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.processes import RedisServer, redis_servers


@pytest.fixture(scope="session")
def backends3() -> Iterator[list[RedisServer]]:
    """Three real redis-server processes shared by a session's tests (flushed per test by users)."""
    with redis_servers(3) as servers:
        yield servers


@pytest.fixture
def redis1() -> Iterator[RedisServer]:
    with redis_servers(1) as servers:
        yield servers[0]


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
