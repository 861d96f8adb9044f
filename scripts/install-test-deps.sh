#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12 machine (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
command -v cc >/dev/null || need_apt+=(gcc)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  else
    echo "missing: ${need_apt[*]} (install them with apt-get as root)" >&2
    exit 1
  fi
fi

# The relay's tests and benchmark drive the daemon with the real Socket.IO clients (and the
# benchmark's anchor server): the npm project in tests/relay_clients, installed from its lock
# file. The stamp makes a second run free unless the lock file changed.
clients=tests/relay_clients
if ! cmp -s "$clients/package-lock.json" "$clients/node_modules/.installed-lock" 2>/dev/null; then
  (cd "$clients" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$clients/package-lock.json" "$clients/node_modules/.installed-lock"
fi

# A second client implementation: python-socketio (with its WebSocket client).
if ! python3 -c 'import socketio, websocket, requests' 2>/dev/null; then
  python3 -m pip install --quiet 'python-socketio[client]>=5.11,<6' ||
    python3 -m pip install --quiet --break-system-packages 'python-socketio[client]>=5.11,<6'
fi

# The Slurm provider's tests start a real single-node Slurm and an sshd (scripts/test.sh):
# Debian's slurmctld, slurmd, slurm-client, munge, slurmdbd, mariadb-server, openssh-server.
# `cluster.sh install` installs only the missing ones and leaves no service running; it needs
# root, as starting the cluster does.
if [ "$(id -u)" = 0 ]; then
  scripts/cluster.sh install
elif ! command -v sbatch >/dev/null || ! command -v slurmctld >/dev/null; then
  echo "missing: Slurm (run scripts/cluster.sh install as root; the Slurm tests need it)" >&2
  exit 1
fi
