# quantbench runtime image: the CLI, the benchmark flow and the per-shard inference code.
# Build: docker build -t quantbench .    Run the demo: docker run --rm quantbench run
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 quantbench
WORKDIR /opt/quantbench

# Dependencies are pinned in pyproject.toml; the same `pip install` the Makefile runs (minus -e/dev).
COPY pyproject.toml README.md ./
COPY tasks ./tasks
COPY flows ./flows
COPY demo ./demo
RUN python -m pip install --no-cache-dir .

USER 10001
WORKDIR /home/quantbench
ENTRYPOINT ["quantbench"]
CMD ["run"]
