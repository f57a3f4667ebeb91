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
# A C compiler and the Python headers let `pip install` compile the request path (setup.py);
# without them shardproxy installs as pure Python, slower but the same behaviour.
command -v gcc >/dev/null 2>&1 || command -v cc >/dev/null 2>&1 || need+=(gcc)
python3 -c 'import os, sysconfig; os.stat(sysconfig.get_paths()["include"] + "/Python.h")' \
  >/dev/null 2>&1 || need+=(python3-dev)
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
# setuptools >= 77 reads pyproject's license and runs setup.py for scripts/build.sh (--dev).
.venv/bin/pip install -q 'setuptools>=77' wheel
if [ "$dev" = 1 ]; then
  # Editable and pure (setup.py): edits take effect at once; scripts/build.sh compiles in place.
  .venv/bin/pip install -q -e '.[dev]'
  rm -f .venv/.shardproxy-installed
else
  # Installed, compiled when gcc and the headers are there (a few minutes): again only after a
  # source changed since the last install.
  stamp=.venv/.shardproxy-installed
  if [ ! -e "$stamp" ] || [ -n "$(find proxy setup.py pyproject.toml -newer "$stamp" | head -1)" ]
  then
    echo "installing shardproxy into .venv (compiling its request path takes a few minutes)" >&2
    .venv/bin/pip install -q .
    touch "$stamp"
    # pip keeps setup.py's "builds as pure Python: <why>" quiet; say which build it made.
    (cd /tmp && "$OLDPWD/.venv/bin/shardproxy" --version) >&2
  fi
fi
