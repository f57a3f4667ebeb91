#!/usr/bin/env bash
# Install what shardproxy needs on a fresh Debian machine: redis-server (and, with --dev, the test
# tools: redis-tools, nutcracker, nodejs and npm) from Debian, then a virtualenv in .venv with the package.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ "$dev" = 1 ]; then
  command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
  command -v nutcracker >/dev/null 2>&1 || [ -x /usr/sbin/nutcracker ] || need+=(nutcracker)
  # BullMQ's test (tests/integration/test_queue_libraries.py) runs a node worker; it is skipped,
  # with the reason, where node or npm is missing.
  command -v node >/dev/null 2>&1 || need+=(nodejs)
  command -v npm >/dev/null 2>&1 || need+=(npm)
fi
if [ "${#need[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing ${need[*]} from Debian" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
# setuptools explains editable installs at length on every run: nothing to act on here.
export PYTHONWARNINGS=ignore
if [ "$dev" = 1 ]; then
  .venv/bin/pip install -q -e '.[dev]'
else
  .venv/bin/pip install -q -e .
fi
