#!/usr/bin/env bash
# Run units of Redis's own Tcl test suite against a running server or proxy, and count the
# results. Needs tclsh and a Redis source tree of the backends' version (tests/, runtest):
#   scripts/redis_suite.sh /path/to/redis-7.0.15 6380 unit/multi unit/pubsub unit/type/list
# unit/pubsubshard runs the first block of that unit (see below).
# Tests that need what no proxy offers (DEBUG, replication, CONFIG of maxmemory, SAVE...) are
# skipped by tag, and those in scripts/redis_suite.skip by name; --singledb. Prints
# "unit: N ok, N err, exception". The proxy needs allow_flush: true (the suite cleans up with
# FLUSHALL and FUNCTION FLUSH) and allow_config_set for the tunables the units set: save,
# notify-keyspace-events, "list-*", "zset-*", "hash-*", "set-*", lua-time-limit,
# proto-max-bulk-len, client-query-buffer-limit.
set -euo pipefail
skipfile=$(cd "$(dirname "$0")" && pwd)/redis_suite.skip
src=$1 port=$2
shift 2
cd "$src"
mkdir -p src
for bin in redis-server redis-cli redis-benchmark; do
  [ -e "src/$bin" ] || ln -sf "$(command -v $bin)" "src/$bin"
done
deny="-needs:debug -needs:repl -needs:config-maxmemory -needs:config-resetstat -needs:reset"
deny="$deny -needs:save -needs:pfdebug -needs:local-process -needs:latency -external:skip"
# Tests Redis itself keeps from cluster mode: they use keys of different slots together.
deny="$deny -cluster:skip"
for unit in "$@"; do
  if [ "$unit" = unit/pubsubshard ]; then
    # Its first block (one server, no replication) is tagged external:skip as a whole; run a
    # copy of that block without the tag. The second block needs two servers it starts itself.
    second=$(grep -n '^start_server' tests/unit/pubsubshard.tcl | sed -n 2p | cut -d: -f1)
    head -n $((second - 1)) tests/unit/pubsubshard.tcl | sed 's/ external:skip//' \
      > tests/unit/proxy_pubsubshard.tcl
    unit=unit/proxy_pubsubshard
  fi
  out=$(timeout 600 ./runtest --host 127.0.0.1 --port "$port" --singledb --clients 1 \
        --tags "$deny" --skipfile "$skipfile" --single "$unit" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' || true)
  ok=$(grep -c '\[ok\]' <<<"$out" || true)
  err=$(grep -c '\[err\]' <<<"$out" || true)
  exc=$(grep -c '\[exception\]' <<<"$out" || true)
  echo "$unit: $ok ok, $err err, $exc exception"
  if [ "${VERBOSE:-0}" = 1 ]; then grep -E '\[(err|exception)\]' -A3 <<<"$out" || true; fi
done
