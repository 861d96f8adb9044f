#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12 machine (idempotent).
set -euo pipefail
need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
command -v cc >/dev/null || need_apt+=(gcc)
command -v openssl >/dev/null || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  else
    echo "missing: ${need_apt[*]} (install them with apt-get as root)" >&2
    exit 1
  fi
fi
