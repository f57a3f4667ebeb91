"""A Celery app whose broker and result backend are the proxy (SHARDPROXY_CELERY_URL), for
tests/integration/test_queue_libraries.py; its worker runs as `celery -A tests.support.celery_app
worker`. kombu's keys (the queue list `celery`, `unacked`, `unacked_index`, `_kombu.binding.*`)
and the result keys and channels all carry the prefix `{celery}` (kombu's `global_keyprefix`),
a hash tag: they live on one backend, so kombu's transactions and Lua-free pipelines run there.

`work(i, mode)` counts its runs in `{celery}runs:<i>` (through the proxy) and then: "ok" returns
2*i; "retry" asks self.retry() on its first run; "auto" raises ValueError on its first run
(autoretry_for); "fail" always raises (the task ends FAILURE).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

PREFIX = "{celery}"
URL = os.environ.get("SHARDPROXY_CELERY_URL", "redis://127.0.0.1:6379/0")

app = Celery("shardproxy_test", broker=URL, backend=URL)
app.conf.update(
    broker_transport_options={"global_keyprefix": PREFIX},
    result_backend_transport_options={"global_keyprefix": PREFIX},
    broker_connection_retry_on_startup=True,
    task_acks_late=True,
    worker_prefetch_multiplier=4,
    worker_enable_remote_control=False,
    worker_hijack_root_logger=False,
    result_expires=3600,
)


def runs_key(i: int) -> str:
    return f"{PREFIX}runs:{i}"


@app.task(bind=True, max_retries=2, default_retry_delay=0, autoretry_for=(ValueError,))
def work(self: Any, i: int, mode: str) -> int:
    runs = app.backend.client.incr(runs_key(i))
    if mode == "retry" and runs == 1:
        raise self.retry(countdown=0)
    if mode == "auto" and runs == 1:
        raise ValueError(f"first run of {i}")
    if mode == "fail":
        raise KeyError(f"task {i} fails")
    return 2 * i
