#!/usr/bin/env bash
# Install redis-server from Debian's packages for the Redis row of
# `pagepair bench` (a primary and a replica, SET then WAIT 1 per write): the
# peer a user would pick instead of pagepair, measured in the same run. The
# bench starts its own two redis-server processes on free ports with no
# persistence, so the service the package enables is not needed; it is
# stopped and disabled where systemd runs.
#
# Usage: scripts/install-redis.sh [--check]
#   --check   only report whether redis-server is installed; install nothing.
# Needs root (or sudo) for apt-get. Safe to run again: it installs only
# what is missing.
set -euo pipefail

check=0
for arg in "$@"; do
  case "$arg" in
    --check) check=1 ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
  esac
done

installed() {
  dpkg-query -W -f='${Status}' redis-server 2>/dev/null | grep -q 'install ok installed'
}

if ((check)); then
  if installed && command -v redis-server >/dev/null; then
    echo "redis-server installed: $(redis-server --version)"
    exit 0
  fi
  echo "missing: redis-server"
  exit 1
fi

if ! installed; then
  echo "installing: redis-server"
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y --no-install-recommends redis-server; then
    $sudo apt-get update
    $sudo apt-get install -y --no-install-recommends redis-server
  fi
  # The bench runs its own servers; the packaged one would only hold port 6379.
  if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    $sudo systemctl disable --now redis-server >/dev/null 2>&1 || true
  fi
fi

if ! command -v redis-server >/dev/null; then
  echo "error: redis-server is installed but not on PATH" >&2
  exit 1
fi
echo "redis-server ready: $(redis-server --version)"
