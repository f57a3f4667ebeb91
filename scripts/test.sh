#!/usr/bin/env bash
# Set up and run every check CI runs: ruff, mypy --strict, import-linter, then the pytest suite
# against real redis-server and nutcracker processes, on both builds: the whole suite on the
# compiled build (scripts/build.sh compiles the request path into this checkout), then the unit
# and differential tests, and those that patch module internals (marker pure_only), on pure
# Python. Fails when any check or test fails, or none ran. Arguments go to both pytest runs and
# then replace the pure run's selection.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
export PATH="$PWD/.venv/bin:$PATH:/usr/sbin"
echo "== ruff"; ruff check .; ruff format --check .
echo "== mypy"; mypy
echo "== import-linter"; lint-imports

run_pytest() {  # expected build, pytest arguments...; exits on failure, 5 (none ran) included
  local rc=0
  SHARDPROXY_EXPECT_BUILD="$1" pytest -q "${@:2}" || rc=$?
  if [ "$rc" = 5 ]; then echo "no test ran: failing" >&2; exit 1; fi
  [ "$rc" = 0 ] || exit "$rc"
}

trap 'scripts/build.sh --clean' EXIT  # a compiled module left in the tree would shadow edits
echo "== build: compile the request path (mypyc)"
scripts/build.sh
echo "== pytest: compiled build, every test"
run_pytest compiled "$@"
scripts/build.sh --clean
echo "== pytest: pure build, unit, differential and pure_only tests"
if [ "$#" -gt 0 ]; then
  run_pytest pure "$@"
else
  run_pytest pure tests/unit tests/integration/test_differential.py
  run_pytest pure -m pure_only tests/integration
fi
