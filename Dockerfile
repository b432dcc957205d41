# quantbench images: one pinned base, two targets.
#
#   full  pip install ".[convert]": conversion (TensorFlow 2.18.1, ai-edge-quantizer, kagglehub),
#         the SavedModel baseline and Flex-op models. Runs everything: the benchmark flow, any shard.
#   slim  pip install ".": ai-edge-litert inference of builtin-op .tflite variants, evaluation,
#         latency, reports, `quantbench results`; no TensorFlow (about 1.4 GB less installed). For shard
#         flow runs (flows/shard.py) of builtin-op variants: a Flex-op model fails there with an
#         error that names the full image, and converting a SavedModel needs the full image.
#
#   docker build --target full -t quantbench:full .      (also the default: the last stage)
#   docker build --target slim -t quantbench:slim .
#   docker run --rm quantbench:full                       the demo benchmark, results inside the container
#   docker run --rm -v "$PWD/results:/opt/quantbench/quantbench-results" quantbench:full quantbench run --limit 50
#   docker run --rm --env-file s3.env quantbench:full quantbench results list --store s3://bucket/prefix
#
# ENTRYPOINT is only tini, so the command is CMD alone: Prefect's Docker worker replaces CMD with
# `prefect flow-run execute`, and its Kubernetes worker sets that as the container's args; tini
# (PID 1) passes SIGTERM on to it, so cancelled or evicted flow runs stop cleanly.
# WORKDIR is /opt/quantbench, where the code also is, so deployment entrypoints such as
# flows/shard.py:shard_flow resolve (QUANTBENCH_CODE_DIR=/opt/quantbench, deployments/prefect.yaml).
# The base image is pinned by tag; pin it by digest as well (FROM python:3.11.14-slim-bookworm@sha256:...)
# where builds must be reproducible to the byte.

FROM python:3.11.14-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# ~/.cache exists, owned by the user, so a volume mounted there (models downloaded once) stays writable.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 quantbench \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin quantbench \
    && install -d -o 10001 -g 10001 /home/quantbench/.cache

WORKDIR /opt/quantbench
COPY pyproject.toml README.md ./
COPY tasks ./tasks
COPY flows ./flows
COPY demo ./demo

ENTRYPOINT ["/usr/bin/tini", "--"]


FROM base AS slim
# The core dependencies only (versions pinned in pyproject.toml). quantbench-results/ is the default
# store (./quantbench-results), writable by the user; the code stays root-owned.
RUN python -m pip install --no-cache-dir . \
    && rm -rf build quantbench.egg-info \
    && install -d -o 10001 -g 10001 quantbench-results
USER 10001:10001
CMD ["quantbench", "--help"]


FROM base AS full
# DL3013 (pin versions in pip) cannot see that every version is pinned in pyproject.toml, extras included.
# hadolint ignore=DL3013
RUN python -m pip install --no-cache-dir ".[convert]" \
    && rm -rf build quantbench.egg-info \
    && install -d -o 10001 -g 10001 quantbench-results
USER 10001:10001
CMD ["quantbench", "run"]
