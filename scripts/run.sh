#!/usr/bin/env bash
# Set up and run the proxy with the embedded default: three local redis-server backends, clients on
# 127.0.0.1:6380, admin HTTP on 127.0.0.1:9380. Extra arguments go to `shardproxy serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ "$#" -eq 0 ]; then
  set -- --local 3
fi
exec .venv/bin/shardproxy serve "$@"
