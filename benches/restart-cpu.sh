#!/usr/bin/env bash
# CPU the daemon itself spends per agent restart: N agents crash-loop (each runs 0.2 s, exits 1,
# restart_policy always, zero backoff) for S seconds; the daemon's utime+stime (its own threads,
# not its children) is divided by the restarts counted in LIST.
#
#   benches/restart-cpu.sh [N=50] [S=5]
#
# Uses target/release/clove (run `cargo build --release` first). Run on a quiet machine.
set -euo pipefail
n=${1:-50}
secs=${2:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release/clove
crash=$root/tests/agent_scripts/crash.sh
dir=$(mktemp -d /tmp/clove-restart-cpu.XXXXXX)
sock=$dir/clove.sock
"$bin" serve --socket "$sock" --state-dir "$dir/state" >"$dir/daemon.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do "$bin" ping --socket "$sock" >/dev/null 2>&1 && break; sleep 0.05; done
for i in $(seq "$n"); do
  "$bin" spawn --socket "$sock" "loop$i" "$crash" --interpreter /bin/sh --restart always \
    --max-restarts 100000 --restart-window 1 -- 1 0.2 >/dev/null
done
restarts() {
  "$bin" agents --socket "$sock" --json |
    python3 -c 'import json,sys; print(sum(a.get("restarts", 0) for a in json.load(sys.stdin)))'
}
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
sleep 1
r0=$(restarts); t0=$(ticks)
sleep "$secs"
r1=$(restarts); t1=$(ticks)
awk -v r=$((r1 - r0)) -v t=$((t1 - t0)) -v hz="$hz" -v s="$secs" -v n="$n" 'BEGIN {
  printf "%d agents crash-looping: %d restarts in %d s (%.0f/s); daemon CPU %.2f s = %.2f ms per restart\n",
    n, r, s, r / s, t / hz, (r ? 1000 * t / hz / r : 0) }'
