"""Instructions per request of the proxy's request path, under callgrind: exact on a busy machine.

    python benchmarks/icount.py [--command GET|SET] [--depth 1|16] [--hash NAME] [--top N]

Runs `hotpath.py`'s measurement (a real ClientConnection, RouteTable, Backend and
BackendConnection over in-memory transports) under `valgrind --tool=callgrind` twice, with
REQUESTS and 3 x REQUESTS requests, and divides the difference in instructions by the extra
requests, so start-up and imports cancel out. The harness's in-memory transport (about 3,800
instructions a request) is included. `--top N` also lists the N functions with the most
instructions of their own per request. Needs valgrind (`apt-get install valgrind`); about 30 s.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUESTS = 16_000


def child(command: str, depth: int, total: int, hash_name: str) -> None:
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))
    import hotpath
    import uvloop

    fan_in = 16 if depth == 1 else 4
    uvloop.run(hotpath.measure(command.encode(), depth, fan_in, total, hash_name))


def self_costs(path: Path) -> dict[str, int]:
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--tree=none", "--auto=no", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    costs: dict[str, int] = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(\S.*?)(?: \[.*\])?$", line)
        if m is None:
            continue
        name = "TOTAL" if "PROGRAM TOTALS" in m.group(2) else m.group(2).split(":", 1)[-1]
        costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--command", default="GET", choices=["GET", "SET"])
    parser.add_argument("--depth", type=int, default=1, choices=[1, 16])
    parser.add_argument("--hash", default="crc32a")
    parser.add_argument("--top", type=int, default=0)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.command, args.depth, args.child, args.hash)
        return 0
    costs = []
    with tempfile.TemporaryDirectory() as tmp:
        for total in (REQUESTS, 3 * REQUESTS):
            out = Path(tmp) / f"callgrind.{total}"
            cmd = [sys.executable, __file__, "--command", args.command, "--depth", str(args.depth)]
            cmd += ["--hash", args.hash, "--child", str(total)]
            subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            costs.append(self_costs(out))
    extra = 2 * REQUESTS
    small, big = costs
    per = {k: (big.get(k, 0) - small.get(k, 0)) / extra for k in set(small) | set(big)}
    print(
        f"{args.command} -P {args.depth}, {args.hash}: {per.pop('TOTAL'):,.0f} instructions/request"
    )
    for name, value in sorted(per.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{value:9.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
