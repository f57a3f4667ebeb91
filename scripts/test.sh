#!/usr/bin/env bash
# Set up and run every check CI runs: ruff, mypy --strict, import-linter, then the whole pytest suite
# against real redis-server and nutcracker processes. Fails when any check or test fails, or none ran.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
export PATH="$PWD/.venv/bin:$PATH:/usr/sbin"
echo "== ruff"; ruff check .; ruff format --check .
echo "== mypy"; mypy
echo "== import-linter"; lint-imports
echo "== pytest"
set +e
pytest -q "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then echo "no test ran: failing" >&2; exit 1; fi
exit "$rc"
