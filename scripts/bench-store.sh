#!/usr/bin/env bash
# Benchmark of the durable state store: STORE throughput and latency with 1 and 16 connections
# under store.sync = "full" and "normal", next to FETCH, FETCH while other connections write,
# and the commit batch sizes the writer saw. Each run prints clove bench's own figures.
#
#   scripts/bench-store.sh            # N=50000 requests per run
#   N=200000 scripts/bench-store.sh   # longer runs
#   CLOVE_BENCH_DIR=/some/disk scripts/bench-store.sh   # where the databases go (default /var/tmp)
#
# The databases live on a real disk (not tmpfs), so sync = "full" pays for its fsyncs.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-50000}
cargo build --release --quiet
B=target/release/clove
dir=$(mktemp -d "${CLOVE_BENCH_DIR:-/var/tmp}/clove-bench.XXXXXX")
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

for sync in full normal; do
  printf '[store]\nsync = "%s"\n' "$sync" > "$dir/$sync.toml"
  sock="$dir/$sync.sock"
  "$B" serve --config "$dir/$sync.toml" --socket "$sock" --state-dir "$dir/$sync" \
    > "$dir/$sync.out" 2> "$dir/$sync.log" &
  pid=$!
  for _ in $(seq 1 200); do
    grep -q '^clove: ready' "$dir/$sync.out" 2>/dev/null && break
    sleep 0.05
  done
  grep -q '^clove: ready' "$dir/$sync.out" || { cat "$dir/$sync.log"; exit 1; }
  echo "=== store.sync = \"$sync\" (database in $dir/$sync) ==="
  run() { echo "--- clove bench $*"; "$B" bench --socket "$sock" --size 64 "$@"; }
  run --op store -c 1 -n $((N / 5)) --warmup 1000
  run --op store -c 16 -n "$N" --warmup 2000
  # FETCH alone, then while other connections write: at a steady 2000 STOREs/s, and flat out.
  for c in 1 16; do
    run --op fetch -c "$c" -n $((N * 4)) --warmup 2000
    run --op fetch -c "$c" -n $((N * 4)) --warmup 2000 --background-writers 4 --background-rate 2000
    run --op fetch -c "$c" -n $((N * 4)) --warmup 2000 --background-writers 4
  done
  kill "$pid"; wait "$pid" || true; pid=""
  echo
done
