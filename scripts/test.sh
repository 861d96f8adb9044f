#!/usr/bin/env bash
# Runs the whole test suite, installing what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo test --all-targets "$@"
