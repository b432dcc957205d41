# Two commands on a fresh machine: `make demo` (the benchmark on the embedded demo) and `make test`.
# Each creates the virtualenv .venv on first use (Python 3.11; pip reaches PyPI only for that).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test train-demo base-image images lock
demo: $(VENV)/.installed
	$(BIN)/quantbench run

test: $(VENV)/.installed
	$(BIN)/python -m pytest

# Retrain the committed demo detector (about 15 min on 2 CPU cores); not needed to run anything.
train-demo: $(VENV)/.installed
	$(BIN)/python -m demo.train --out demo/model

# Container images quantbench:slim, quantbench:full and quantbench:s3 (docs/cluster-and-images.md, "The stack"); needs a
# Docker engine. Without a registry, the base image is built from Debian packages (make base-image).
images:
	PYTHON=$(PYTHON) infra/docker/build-images.sh

base-image:
	infra/docker/base-image.sh

# Every package comes from requirements.lock, checked against its SHA-256 hashes (pip's hash-checking
# mode: a file whose hash is not in the lock is refused); then quantbench itself, with the locked
# setuptools as its build backend, so nothing unpinned is fetched.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Regenerate requirements.lock after a change to pyproject.toml's pins or infra/lock.in (uv keeps every
# other pin the lock already has), and the images' locks infra/docker/{slim,full,s3}.lock (each image's
# set, infra/docker/requirements.py, at requirements.lock's versions). For Linux x86_64, CPython 3.11.2
# and later (Debian bookworm's is 3.11.2).
LOCK_TOOL := build/lock-tool
lock:
	test -x $(LOCK_TOOL)/bin/uv || ($(PYTHON) -m venv $(LOCK_TOOL) && $(LOCK_TOOL)/bin/pip install --quiet uv==0.13.8)
	$(LOCK_TOOL)/bin/uv pip compile pyproject.toml infra/lock.in --extra convert --extra dev --generate-hashes \
		--python-version 3.11.2 --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" \
		--quiet -o requirements.lock
	for target in slim full s3; do \
		$(PYTHON) infra/docker/requirements.py $$target | $(LOCK_TOOL)/bin/uv pip compile - -c requirements.lock --generate-hashes \
			--python-version 3.11.2 --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" \
			--quiet -o infra/docker/$$target.lock || exit 1; \
	done
