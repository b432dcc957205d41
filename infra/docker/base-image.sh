#!/usr/bin/env bash
# Build the local base image quantbench-base:bookworm from Debian packages, for machines that cannot
# pull from an image registry: debootstrap (minbase + python3, python3-venv, tini, ca-certificates,
# passwd) from the Debian mirror this machine's apt is configured with, then `docker import`.
# Needs root, debootstrap and a Docker engine. About 40 s here; 170 MB.
#
#   infra/docker/base-image.sh [IMAGE]        (default quantbench-base:bookworm)
#   QUANTBENCH_DEBIAN_MIRROR=http://... to use another mirror.
#
# The image's own apt sources name the public mirror (deb.debian.org), never this machine's.
set -euo pipefail
image="${1:-quantbench-base:bookworm}"
mirror="${QUANTBENCH_DEBIAN_MIRROR:-$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
  | grep -v '^[[:space:]]*#' | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ' || true)}"
mirror="${mirror:-http://deb.debian.org/debian}"
rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
echo "base-image: debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,tini,ca-certificates,passwd bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
  || { tail -n 20 "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
echo "deb http://deb.debian.org/debian bookworm main" >"$rootfs/etc/apt/sources.list"
rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --message "quantbench base: Debian bookworm minbase, python3 3.11, python3-venv, tini" - "$image" >/dev/null
echo "base-image: built $image"
