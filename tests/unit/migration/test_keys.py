"""proxy.migration.keys: a migration's state keys are reserved and live on one target server."""

from __future__ import annotations

from proxy.config.schema import parse_config
from proxy.migration.keys import RESERVED_PREFIX, is_reserved, state_key, state_owner
from proxy.routing.topology import build_pool

NEW = [f"127.0.0.1:700{i}:1 r{i}" for i in range(1, 6)]


def test_state_keys_are_reserved_and_live_on_one_target_server() -> None:
    assert (
        state_key("abc123", "cursor", "127.0.0.1:7001")
        == b"__shardproxy:abc123:cursor:127.0.0.1:7001"
    )
    assert state_key("abc123", "gate").startswith(RESERVED_PREFIX)
    assert is_reserved(state_key("x", "lease")) and not is_reserved(b"user:1")
    assert not is_reserved(b"_shardproxy:x")
    target = build_pool(parse_config(f"pools: {{new: {{servers: {NEW}}}}}", env={}).pool("new"))
    owner = state_owner(target, "abc123")
    assert owner in target.addrs and owner == target.addr_for(b"__shardproxy:abc123:state")
