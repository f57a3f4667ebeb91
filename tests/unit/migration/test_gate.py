"""The gate's seal: a MAC over the migration id, the target pool's identity and the contents."""

from __future__ import annotations

from proxy.config.schema import parse_config
from proxy.migration.gate import MAC_FIELD, GateSeal, gate_key, gate_reason
from proxy.migration.phases import active_migration

GATE: dict[str, object] = {"backfill": "done", "mismatches_after_repair": 0, "checked": 9}
CONFIG = """
pools:
  old: {servers: [127.0.0.1:7001:1 a, 127.0.0.1:7002:1 b]}
  new: {servers: [127.0.0.1:7001:1 a, 127.0.0.1:7002:1 b, 127.0.0.1:7003:1 c]}
route: old
migration:
  to: new
  phase: backfill
%s"""


def test_a_signed_gate_opens_and_any_change_shuts_it() -> None:
    seal = GateSeal("abc", "target-ring", gate_key("s3cret", None))
    signed = seal.sign(GATE)
    assert isinstance(signed[MAC_FIELD], str) and gate_reason(signed, seal) is None
    assert "no MAC" in (gate_reason(GATE, seal) or "")
    for other in (
        GateSeal("abd", "target-ring", seal.key),  # another migration
        GateSeal("abc", "other-ring", seal.key),  # another target pool
        GateSeal("abc", "target-ring", gate_key("guess", None)),  # another secret
    ):
        assert "does not match" in (gate_reason(other.sign(GATE) | {}, seal) or "")
    assert "does not match" in (gate_reason(signed | {"checked": 10}, seal) or "")
    assert "does not match" in (gate_reason(signed | {MAC_FIELD: "00"}, seal) or "")
    assert "mismatches" in (
        gate_reason(seal.sign(GATE | {"mismatches_after_repair": 2}), seal) or ""
    )


def test_without_a_key_gates_are_not_signed() -> None:
    seal = GateSeal("abc", "target-ring", None)
    assert seal.sign(GATE) == GATE and gate_reason(GATE, seal) is None
    assert gate_key(None, None) is None and gate_key("", "") is None
    assert gate_key(None, "pw") not in (None, gate_key("pw", None))  # domain-separated


def test_the_key_comes_from_the_config_and_stays_out_of_reprs() -> None:
    env = {"GATE": "from-env"}
    config = parse_config(CONFIG.replace("%s", "  gate_secret: ${GATE}\n"), env=env)
    m = active_migration(config)
    assert m is not None and m.seal.key == gate_key("from-env", None)
    assert "from-env" not in repr(config) and "from-env" not in repr(m)
    plain = active_migration(parse_config(CONFIG.replace("%s", ""), env={}))
    assert plain is not None and plain.seal.key is None and plain.seal.mid == m.mid
    assert plain.settings.gate_sample_keys == 256
