#!/usr/bin/env bash
# Runs the whole test suite, installing what the tests need first.
#
# The Slurm provider's tests (tests/slurm.rs, and the Slurm benchmark's quick run) need a real
# Slurm and an sshd: a throwaway single-node cluster is started for the run in a fresh temp
# dir (scripts/cluster.sh, as root), named to the tests by CLOVE_TEST_CLUSTER, and stopped by
# its recorded pids at the end, whether the tests passed or not. Without it those tests fail
# (they never skip). Only one such cluster can run on a machine at a time (fixed ports).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh

cluster_dir=$(mktemp -d /tmp/clove-cluster.XXXXXX)
stop_cluster() {
  scripts/cluster.sh stop "$cluster_dir" || echo "test.sh: could not stop the cluster in $cluster_dir" >&2
  rm -rf "$cluster_dir"
}
trap stop_cluster EXIT
trap 'exit 130' INT TERM
scripts/cluster.sh start "$cluster_dir"
export CLOVE_TEST_CLUSTER=$cluster_dir

cargo test --all-targets "$@"
