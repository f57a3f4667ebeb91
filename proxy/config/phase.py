"""The migration phases, as the config file spells them (`migration.phase`).

Owned here, in the lowest layer that reads them: the config hands out a Phase, and the state
machine over phases (legal steps, what each one does) is proxy/migration/phases.py's. The values
are the YAML, metric-label, /status and log spelling; Phase.NONE names "no migration block".
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Phase"]


class Phase(StrEnum):
    NONE = "none"  # no migration block: not re-sharding (never written in a config file)
    DOUBLE_WRITE = "double-write"
    BACKFILL = "backfill"
    CUT_READ = "cut-read"
    RETIRE = "retire"
