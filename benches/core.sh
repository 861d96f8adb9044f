#!/usr/bin/env bash
# Measures clove's Unix-socket core against the limit probe (benches/limit-echo.c) in one
# run, three interleaved rounds, and prints each figure with its ratio to the probe.
#
#   benches/core.sh [path/to/limit-echo.c]      (default: benches/limit-echo.c, in this repository)
#
# CLOVE_BIN=path measures that binary instead of building this tree's (to compare two builds
# in one session).
#
# Figures: NOOP p50 on 1 connection; NOOP throughput on 16 connections; pipelined NOOP
# (window 64) throughput; FETCH throughput on 16 connections (vs the probe's NOOP); idle RSS
# of a fresh daemon; 1,000 idle connections held during a NOOP run.
set -euo pipefail
cd "$(dirname "$0")/.."
probe_src="${1:-${LIMIT_ECHO_SRC:-benches/limit-echo.c}}"
rounds="${ROUNDS:-3}"
if [ -n "${CLOVE_BIN:-}" ]; then
  bin=$CLOVE_BIN
else
  cargo build --release --quiet
  bin=target/release/clove
fi
dir=$(mktemp -d /tmp/clove-bench.XXXXXX)
cc -O2 -o "$dir/limit-echo" "$probe_src"
"$dir/limit-echo" "$dir/limit.sock" & probe_pid=$!
"$bin" serve --socket "$dir/clove.sock" --state-dir "$dir/state" >"$dir/out" 2>"$dir/log" & clove_pid=$!
cleanup() { kill "$probe_pid" "$clove_pid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
for _ in $(seq 100); do
  [ -S "$dir/limit.sock" ] && grep -q ready "$dir/out" 2>/dev/null && break
  sleep 0.05
done
idle_rss=$(awk '/VmRSS/ {print $2}' "/proc/$clove_pid/status")
# RSS counts the binary's text mapped from the page cache (shared and clean, and on this kind of
# VM nearly all of it); the anonymous part is the daemon's own memory.
idle_anon=$(awk '/RssAnon/ {print $2}' "/proc/$clove_pid/status")

b() { "$bin" bench --json "$@"; }
results="$dir/results.jsonl"
for round in $(seq "$rounds"); do
  for target in probe clove; do
    sock="$dir/limit.sock"; [ $target = clove ] && sock="$dir/clove.sock"
    echo "{\"round\":$round,\"target\":\"$target\",\"case\":\"noop_c1\",\"r\":$(b --socket "$sock" -c 1 -n 30000 --warmup 3000)}" >>"$results"
    echo "{\"round\":$round,\"target\":\"$target\",\"case\":\"noop_c16\",\"r\":$(b --socket "$sock" -c 16 -n 400000)}" >>"$results"
    echo "{\"round\":$round,\"target\":\"$target\",\"case\":\"noop_c16_p64\",\"r\":$(b --socket "$sock" -c 16 -P 64 -n 4000000 --warmup 100000)}" >>"$results"
  done
  echo "{\"round\":$round,\"target\":\"clove\",\"case\":\"fetch_c16\",\"r\":$(b --socket "$dir/clove.sock" --op fetch -c 16 -n 400000)}" >>"$results"
done
echo "{\"round\":0,\"target\":\"clove\",\"case\":\"idle1000\",\"r\":$(b --socket "$dir/clove.sock" -c 1 -n 20000 --idle 1000)}" >>"$results"

python3 - "$results" "$idle_rss" "$idle_anon" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
idle_rss_kib = int(sys.argv[2])
idle_anon_kib = int(sys.argv[3])
def get(target, case, field):
    return [r["r"][field] for r in rows if r["target"] == target and r["case"] == case]
med = lambda xs: statistics.median(xs)
print(f"clove core benchmark, {max(r['round'] for r in rows)} rounds, medians (probe = limit-echo.c)")
print(f"{'case':34} {'probe':>14} {'clove':>14} {'ratio':>8}  goal")
def line(name, p, c, ratio, goal):
    print(f"{name:34} {p:>14} {c:>14} {ratio:>8.2f}  {goal}")
p, c = med(get("probe", "noop_c1", "p50_us")), med(get("clove", "noop_c1", "p50_us"))
line("NOOP 1 conn p50 (us)", f"{p:.1f}", f"{c:.1f}", c / p, "<= 1.5")
for case, name, goal in [("noop_c16", "NOOP 16 conns (req/s)", ">= 0.70"),
                         ("noop_c16_p64", "NOOP 16 conns window 64 (req/s)", ">= 0.50")]:
    p, c = med(get("probe", case, "throughput")), med(get("clove", case, "throughput"))
    line(name, f"{p:.0f}", f"{c:.0f}", c / p, goal)
p, c = med(get("probe", "noop_c16", "throughput")), med(get("clove", "fetch_c16", "throughput"))
line("FETCH 16 conns vs probe NOOP (req/s)", f"{p:.0f}", f"{c:.0f}", c / p, ">= 0.60")
print(f"idle RSS of a fresh daemon: {idle_rss_kib / 1024:.1f} MiB, of which anonymous "
      f"{idle_anon_kib / 1024:.1f} MiB (the rest is the binary's text in the page cache)")
idle = [r["r"] for r in rows if r["case"] == "idle1000"][0]
print(f"1000 idle connections held: NOOP p50 {idle['p50_us']:.1f}us p99 {idle['p99_us']:.1f}us, "
      f"errors {idle['errors']}, daemon RSS {idle['server_rss_kib'] / 1024:.1f} MiB")
PY
