from __future__ import annotations

from collections.abc import Iterator

import pytest

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
