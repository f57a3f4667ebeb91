#!/usr/bin/env bash
# Compile the request path in place, for tests and benchmarks in this checkout, or remove it again.
#   scripts/build.sh          mypyc-compile the modules setup.py lists: a .so next to each .py
#   scripts/build.sh --clean  remove every compiled module: the checkout runs pure Python again
# An editable install is pure (setup.py); a .so in the tree shadows its .py, so after editing a
# compiled module run this again (tests refuse to start on a stale .so: proxy/build_info.py).
set -euo pipefail
cd "$(dirname "$0")/.."
find proxy -name '*.so' -delete
rm -f ./*__mypyc*.so  # where builds before group_name put it
rm -rf build/temp.* build/lib.*
[ "${1:-}" = "--clean" ] && exit 0
start=$SECONDS
log=$(mktemp)
if ! SHARDPROXY_COMPILE=1 .venv/bin/python setup.py build_ext --inplace >"$log" 2>&1; then
  cat "$log" >&2; rm -f "$log"; exit 1
fi
grep -i "warning: shardproxy" "$log" >&2 || true
rm -f "$log"
echo "compiled $(find proxy -name '*.so' | wc -l) modules in $((SECONDS - start)) s" >&2
