# Two commands on a fresh machine: `make demo` (the benchmark on the embedded demo) and `make test`.
# Each creates the virtualenv .venv on first use (Python 3.11; pip reaches PyPI only for that).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test train-demo
demo: $(VENV)/.installed
	$(BIN)/quantbench run

test: $(VENV)/.installed
	$(BIN)/python -m pytest

# Retrain the committed demo detector (about 15 min on 2 CPU cores); not needed to run anything.
train-demo: $(VENV)/.installed
	$(BIN)/python -m demo.train --out demo/model

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[convert,dev]"
	touch $@
