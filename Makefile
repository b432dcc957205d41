# Two commands on a fresh machine: `make demo` (the benchmark on the embedded demo) and `make test`.
# Each creates the virtualenv .venv on first use (Python 3.11; pip reaches PyPI only for that).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test train-demo base-image images
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

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[convert,dev]"
	touch $@
