"""Job functions for tests/integration/test_rq.py: importable by an RQ worker by dotted name.

Each job records its effect under the `rq:` prefix (the routed pool), so the test counts exact
effects there: `done` lists each successful job's index once, `attempts:<i>` counts its runs.
"""

from __future__ import annotations

from rq import get_current_job


def _conn():  # type: ignore[no-untyped-def]
    job = get_current_job()
    assert job is not None
    return job.connection


def succeed(index: int) -> int:
    conn = _conn()
    conn.incr(f"rq:test:attempts:{index}")
    conn.rpush("rq:test:done", index)
    return index


def flaky(index: int) -> int:
    """Fails its first run, succeeds on the retry."""
    conn = _conn()
    if conn.incr(f"rq:test:attempts:{index}") == 1:
        raise RuntimeError(f"job {index}: first attempt fails")
    conn.rpush("rq:test:done", index)
    return index


def fail(index: int) -> None:
    conn = _conn()
    conn.incr(f"rq:test:attempts:{index}")
    raise RuntimeError(f"job {index} always fails")
