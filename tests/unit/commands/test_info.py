"""INFO memory and stats summed over backends (commands/info.py)."""

from __future__ import annotations

import pytest

from proxy.commands.info import backend_sections, parse_sections, sum_section

A = (
    b"# Memory\r\nused_memory:1024\r\nused_memory_human:1.00K\r\nused_memory_peak_perc:50.00%\r\n"
    b"mem_fragmentation_ratio:2.00\r\nmaxmemory_policy:noeviction\r\n"
    b"total_system_memory:100\r\n# Stats\r\nkeyspace_hits:3\r\ninstantaneous_input_kbps:1.50\r\n"
)
B = (
    b"# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n"
    b"used_memory_peak_perc:100.00%\r\n"
    b"mem_fragmentation_ratio:1.00\r\nmaxmemory_policy:allkeys-lru\r\n"
    b"total_system_memory:100\r\n# Stats\r\nkeyspace_hits:4\r\ninstantaneous_input_kbps:0.25\r\n"
)


@pytest.mark.parametrize(
    ("args", "sections"),
    [
        ([b"INFO"], ["memory", "stats", "keyspace"]),
        ([b"INFO", b"ALL"], ["memory", "stats", "keyspace"]),
        ([b"INFO", b"Memory"], ["memory"]),
        ([b"INFO", b"server", b"stats"], ["stats"]),
        ([b"INFO", b"server"], []),
    ],
)
def test_backend_sections(args: list[bytes], sections: list[str]) -> None:
    assert backend_sections(args) == sections


def test_memory_summed_ratios_averaged_text_first_human_recomputed() -> None:
    fields = dict(parse_sections(sum_section("memory", [A, B]))["memory"])
    assert fields == {
        "used_memory": str(1024 + 1048576),
        "used_memory_human": "1.00M",
        "used_memory_peak_perc": "75.00%",
        "mem_fragmentation_ratio": "1.50",
        "maxmemory_policy": "noeviction",
        "total_system_memory": "100",
    }


def test_stats_summed_and_missing_section() -> None:
    fields = dict(parse_sections(sum_section("stats", [A, B]))["stats"])
    assert fields == {"keyspace_hits": "7", "instantaneous_input_kbps": "1.75"}
    assert sum_section("stats", [b"# Server\r\nx:1\r\n"]) == b""
