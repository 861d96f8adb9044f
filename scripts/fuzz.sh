#!/usr/bin/env bash
# Runs every cargo-fuzz target for a fixed time each (default 30 s). cargo-fuzz needs nightly
# features; RUSTC_BOOTSTRAP=1 enables them on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
if ! command -v cargo-fuzz >/dev/null; then
  cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
for target in $(cargo fuzz list); do
  echo "fuzz: $target for ${secs}s"
  cargo fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=2048 2>&1 | tail -3
  test "${PIPESTATUS[0]}" -eq 0
done
