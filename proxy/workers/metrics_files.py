"""A worker's metrics, published for its supervisor in prometheus-client's multiprocess format.

Each worker copies a snapshot of its registry (the plain per-command and per-backend stats are
read by the same collector a single proxy's /metrics uses) into one file per metric type in the
supervisor's directory, every PUBLISH_INTERVAL_S and once when it stops; the request path never
touches prometheus-client. Values are absolute, not deltas, so a publish is idempotent. Invariant:
a file holds exactly the series the worker exports now (one that went away, e.g. a backend removed
by a reload, is dropped by rewriting the file), under prometheus-client's names
(`counter_<pid>.db`, `gauge_livesum_<pid>.db`...), so `MultiProcessCollector` merges them and
`mark_process_dead` forgets a dead worker's live gauges.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import mark_process_dead

from proxy.net.metrics import GAUGE_MODES, JOB_FAMILIES, SUPERVISOR_FAMILIES

PUBLISH_INTERVAL_S = 1.0  # how stale the supervisor's /metrics may be
JOBS_ID = "jobs"  # file id of the migration job's families: one runner, kept across its restarts


class MetricsPublisher:
    def __init__(
        self, registry: CollectorRegistry, directory: str, runs_jobs: bool, ident: str = ""
    ) -> None:
        self.registry = registry
        self.directory = directory
        self.runs_jobs = runs_jobs  # this worker runs the migration job (worker 0)
        self.ident = ident or str(os.getpid())  # file id; distinct per live process
        self._files: dict[str, tuple[MmapedDict, frozenset[str]]] = {}  # name -> file, its keys

    def publish(self) -> None:
        snapshot: dict[str, dict[str, float]] = {}  # file name -> mmap key -> value
        for family in self.registry.collect():
            name = file_name(family, self.ident)
            if name is None or (family.name in JOB_FAMILIES and not self.runs_jobs):
                continue
            entries = snapshot.setdefault(name, {})
            for sample_name, labels, value in samples(family):
                key = mmap_key(
                    family.name, sample_name, list(labels), list(labels.values()),
                    family.documentation,
                )  # fmt: skip
                entries[key] = value
        for name in self._files.keys() - snapshot.keys():
            snapshot[name] = {}  # every series of that file went away
        for name, entries in snapshot.items():
            self._write(name, entries)

    def _write(self, name: str, entries: dict[str, float]) -> None:
        opened = self._files.get(name)
        keys = frozenset(entries)
        if opened is None or not opened[1] <= keys:
            # First write from this process, or a series went away: a fresh file, swapped in
            # whole (a reader sees the old file or the new one, never half of either).
            if opened is not None:
                opened[0].close()  # type: ignore[no-untyped-call]
            path = os.path.join(self.directory, name)
            tmp = path + ".tmp"  # not *.db: invisible to the collector until renamed
            if os.path.exists(tmp):
                os.remove(tmp)
            file = MmapedDict(tmp)  # type: ignore[no-untyped-call]
            self._write_values(file, entries)
            os.replace(tmp, path)
            self._files[name] = (file, keys)
            return
        self._files[name] = (opened[0], keys)
        self._write_values(opened[0], entries)

    @staticmethod
    def _write_values(file: MmapedDict, entries: dict[str, float]) -> None:
        for key, value in entries.items():
            file.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        for file, _ in self._files.values():
            file.close()  # type: ignore[no-untyped-call]
        self._files.clear()


def file_name(family: Metric, ident: str) -> str | None:
    """The multiprocess file a family goes to, None when workers do not publish it."""
    if family.name in SUPERVISOR_FAMILIES:
        return None
    owner = JOBS_ID if family.name in JOB_FAMILIES else ident
    if family.type in ("counter", "histogram"):
        return f"{family.type}_{owner}.db"
    if family.type == "gauge":
        return f"gauge_{GAUGE_MODES.get(family.name, 'livesum')}_{owner}.db"
    return None  # info, summary...: none is exported by a worker


def samples(family: Metric) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) as multiprocess files hold them: no `_created`; histogram buckets
    per bucket (not cumulative) and no `_count` (the collector derives both)."""
    below: dict[tuple[tuple[str, str], ...], float] = {}  # histogram series -> previous bucket
    for s in family.samples:
        if s.name.endswith("_created"):
            continue
        if family.type == "histogram":
            if s.name.endswith("_count"):
                continue
            if s.name.endswith("_bucket"):
                series = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                previous = below.get(series, 0.0)
                below[series] = s.value
                yield s.name, s.labels, s.value - previous
                continue
        yield s.name, s.labels, s.value


def forget_worker(pid: int, directory: str) -> None:
    """A worker died: drop its live gauges (its counters keep counting in the sums)."""
    mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
