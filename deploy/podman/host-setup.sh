#!/usr/bin/env bash
# Prepares a Debian host without a Docker engine to build and run the streamd image with podman:
# installs podman/runc/debootstrap, writes the settings this kind of host needs, and makes a local
# Python 3.11 base image, because no registry image can be pulled here. Idempotent; run as root.
#   BASE_IMAGE  the local base to create (default localhost/streamd-base:bookworm)
set -euo pipefail
BASE_IMAGE=${BASE_IMAGE:-localhost/streamd-base:bookworm}
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends podman runc debootstrap
fi

# crun cannot run here (cgroups hybrid mode) and the default ulimits are refused by setrlimit.
CONF=/etc/containers/containers.conf
if ! grep -qs '^runtime *= *"runc"' "$CONF"; then
  $SUDO mkdir -p /etc/containers
  printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n' \
    | $SUDO tee "$CONF" >/dev/null
fi

# The public python:3.11-slim-bookworm image is bookworm + Python 3.11; bookworm's own python3 is 3.11.
if ! $SUDO podman image exists "$BASE_IMAGE"; then
  ROOTFS=$(mktemp -d /var/tmp/streamd-base.XXXXXX)
  trap '$SUDO rm -rf "$ROOTFS"' EXIT
  $SUDO debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOTFS" >/dev/null
  $SUDO rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
  $SUDO tar -C "$ROOTFS" -c . | $SUDO podman import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
fi
echo "podman ready; base image $BASE_IMAGE"
