#!/usr/bin/env bash
# `make images`: build quantbench:slim and quantbench:full (and quantbench:s3, the compose stack's
# SeaweedFS) from the Dockerfile at the repository root.
#
# The base image: BASE_IMAGE if set; else the official python image the Dockerfile names, when it is
# present or can be pulled; else quantbench-base:bookworm, built from Debian packages by
# infra/docker/base-image.sh if it is not there yet (machines without a registry).
# The wheelhouse (build/wheelhouse/) is filled for that base first (infra/docker/wheelhouse.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
python="${PYTHON:-python3}"
official="$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)"
local_base="quantbench-base:bookworm"
base="${BASE_IMAGE:-}"
if [ -z "$base" ]; then
  if docker image inspect "$official" >/dev/null 2>&1 || docker pull --quiet "$official" >/dev/null 2>&1; then
    base="$official"
  else
    echo "images: $official cannot be pulled (no registry?): using $local_base"
    docker image inspect "$local_base" >/dev/null 2>&1 || infra/docker/base-image.sh "$local_base"
    base="$local_base"
  fi
fi
"$python" infra/docker/wheelhouse.py "$base"
for target in slim full s3; do
  start=$(date +%s)
  docker build --quiet --network host --build-arg "BASE_IMAGE=$base" --target "$target" -t "quantbench:$target" . >/dev/null
  echo "images: quantbench:$target on $base in $(( $(date +%s) - start )) s, $(docker image inspect --format '{{.Size}}' "quantbench:$target" | awk '{printf "%.0f MB", $1/1e6}')"
done
