"""The backfill -> cut-read gate: its JSON, its seal, and why it does or does not open.

A backfill writes the gate on the target pool, where any client's EVAL could write a key too, so
when the proxies hold a secret the gate carries an HMAC-SHA256 over the migration id, the target
pool's identity and the gate's contents: a gate a client wrote (or copied from another migration)
does not open. Also owns BackfillState, whose DONE the gate records. Pure: hashlib and hmac only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

__all__ = ["MAC_FIELD", "BackfillState", "GateSeal", "gate_key", "gate_reason"]

MAC_FIELD: Final = "mac"
_KEY_LABEL: Final = b"shardproxy migration gate v1"
_KEY_FROM_PASSWORD: Final = b"shardproxy migration gate v1, from backend.password"


class BackfillState(StrEnum):
    """A backfill job's state, as /status, the shared status key and the gate spell it."""

    IDLE = "idle"  # not started, or stopped (resumable from its checkpoints)
    RUNNING = "running"
    DONE = "done"  # the gate is written
    FAILED = "failed"


def gate_key(gate_secret: str | None, backend_password: str | None) -> bytes | None:
    """The gate's HMAC key: from migration.gate_secret, else from backend.password (which a
    client of the proxy never sees, and a Lua script cannot read: CONFIG and ACL are noscript),
    else None: gates are not signed and only the sampled re-check guards the step."""
    if gate_secret:
        return hmac.new(_KEY_LABEL, gate_secret.encode(), hashlib.sha256).digest()
    if backend_password:
        return hmac.new(_KEY_FROM_PASSWORD, backend_password.encode(), hashlib.sha256).digest()
    return None


@dataclass(frozen=True, slots=True)
class GateSeal:
    """Signs and checks the gate of one migration."""

    mid: str  # the migration id
    target: str  # the target pool's identity: its placement (servers, hash, ring), as JSON
    key: bytes | None = field(default=None, repr=False)  # None: gates are not signed

    def _mac(self, gate: Mapping[str, object]) -> str:
        body = {k: v for k, v in gate.items() if k != MAC_FIELD}
        text = json.dumps(
            {"mid": self.mid, "target": self.target, "gate": body},
            sort_keys=True,
            separators=(",", ":"),
        )
        assert self.key is not None
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()

    def sign(self, gate: Mapping[str, object]) -> dict[str, object]:
        """The gate to write: with its MAC when the proxies hold a key."""
        signed = dict(gate)
        if self.key is not None:
            signed[MAC_FIELD] = self._mac(gate)
        return signed

    def problem(self, gate: Mapping[str, object]) -> str | None:
        """None when the gate's MAC is right (or gates are not signed), else what is wrong."""
        if self.key is None:
            return None
        mac = gate.get(MAC_FIELD)
        if not isinstance(mac, str):
            return (
                "the gate on the target pool carries no MAC: it was not written by a proxy holding"
                " this fleet's migration.gate_secret (forged, or from an older version)"
            )
        if not hmac.compare_digest(mac, self._mac(gate)):
            return (
                "the gate's MAC does not match: it was not written by a proxy holding this"
                " fleet's migration.gate_secret for this migration and target pool (forged?)"
            )
        return None


def gate_reason(gate: Mapping[str, object] | None, seal: GateSeal | None = None) -> str | None:
    """None when the gate (read_gate's JSON) lets backfill -> cut-read through, else why not."""
    if gate is None:
        return "the backfill has not finished (no gate written on the target pool)"
    problem = seal.problem(gate) if seal is not None else None
    if problem is not None:
        return problem
    if gate.get("backfill") != BackfillState.DONE:
        return f"the backfill is not done ({gate.get('backfill')!r})"
    mismatches = gate.get("mismatches_after_repair")
    if mismatches != 0:
        return (
            f"the verifier left {mismatches} mismatches after repair; run `shardproxy verify"
            " --repair` or set migration.force: true"
        )
    return None
