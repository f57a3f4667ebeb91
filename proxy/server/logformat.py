"""Log lines on stderr: text, or one JSON object per line for log shippers. A worker process
(`workers: N > 1`) tags each line with its index, so interleaved lines stay attributable."""

from __future__ import annotations

import json
import logging


def setup_logging(fmt: str, level: str, worker: int | None = None) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(_JsonFormatter(worker))
    else:
        tag = "" if worker is None else f" [worker {worker}]"
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class _JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.worker is not None:
            line["worker"] = self.worker
        return json.dumps(line)
