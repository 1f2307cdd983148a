#!/usr/bin/env bash
# Installs everything Hutch needs on a Debian 12 machine: apt packages, uv, the Python workspace.
# Safe to run again; each step is skipped when already done. Must run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  crun            # the container isolation class
  runsc           # the gvisor isolation class
  mmdebstrap      # builds the base template from the host's own apt sources
  btrfs-progs     # formats the volume that holds sandboxes' disk quotas
  iproute2 nftables
  busybox-static  # test images without Python
  zstd tmux git ca-certificates python3 python3-venv
  gcc libc6-dev   # builds the small preload library gVisor sandboxes need (see gvisor_compat.c)
  restic          # the baseline `make bench` compares snapshot backup and restore with
)
UV_VERSION=0.13.9
TOOLS=/opt/hutch/tools

if [ "$(id -u)" -ne 0 ]; then
  echo "bootstrap: run as root (sandboxes need mounts, cgroups and namespaces)" >&2
  exit 1
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v uv >/dev/null 2>&1 && [ ! -x "$TOOLS/bin/uv" ]; then
  echo "bootstrap: installing uv $UV_VERSION into $TOOLS"
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q "uv==$UV_VERSION"
fi
UV=$(command -v uv || echo "$TOOLS/bin/uv")

UV_PYTHON_DOWNLOADS=never "$UV" sync --frozen --quiet
