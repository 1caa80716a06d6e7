#!/usr/bin/env bash
# Install the NBD clients pagepair's real-client tests use, from Debian's
# packages: nbdkit (the reference server the NBD benchmark compares against),
# libnbd-bin (nbdinfo, nbdcopy, nbdsh, nbdfuse), python3-libnbd (for nbdsh),
# qemu-utils (qemu-io, qemu-img), fio (its nbd engine) and nbd-client.
#
# Usage: scripts/install-nbd-clients.sh [--check] [--demo]
#   --check   only report which clients are missing; install nothing.
#   --demo    also what scripts/host-failover-demo.mjs uses: fuse2fs and
#             fuse3 (ext4 in userspace over nbdfuse) and e2fsprogs.
# Needs root (or sudo) for apt-get. Safe to run again: it installs only
# what is missing.
set -euo pipefail

packages=(nbdkit libnbd-bin python3-libnbd qemu-utils fio nbd-client)
# One command each package must provide.
declare -A provides=(
  [nbdkit]=nbdkit
  [libnbd-bin]=nbdinfo
  [python3-libnbd]=
  [qemu-utils]=qemu-io
  [fio]=fio
  [nbd-client]=nbd-client
)
check=0
for arg in "$@"; do
  case "$arg" in
    --check) check=1 ;;
    --demo)
      packages+=(fuse2fs fuse3 e2fsprogs)
      provides[fuse2fs]=fuse2fs
      provides[fuse3]=fusermount3
      provides[e2fsprogs]=e2fsck
      ;;
    *) echo "usage: $0 [--check] [--demo]" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if ((check)); then
  if ((${#missing[@]})); then
    echo "missing: ${missing[*]}"
    exit 1
  fi
  echo "all NBD clients installed"
  exit 0
fi

if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y --no-install-recommends "${missing[@]}"; then
    $sudo apt-get update
    $sudo apt-get install -y --no-install-recommends "${missing[@]}"
  fi
fi

# nbdsh is a python3 script; these machines keep their python3 elsewhere
# (pyenv), so make sure /usr/bin/python3 is Debian's, which has libnbd.
if [[ ! -x /usr/bin/python3 ]]; then
  echo "warning: /usr/bin/python3 is missing; nbdsh will not run" >&2
fi

for p in "${packages[@]}"; do
  cmd=${provides[$p]}
  if [[ -n "$cmd" ]] && ! command -v "$cmd" >/dev/null; then
    echo "error: $p is installed but $cmd is not on PATH" >&2
    exit 1
  fi
done
echo "NBD clients ready: $(nbdinfo --version 2>/dev/null | head -1); $(qemu-io --version | head -1); $(fio --version)"
