# The two commands a newcomer needs: `make serve` and `make test`. Both create .venv on first use.
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: serve test test-slow test-all lint bench-upload

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned first so that nothing later can pull a CUDA build.
$(VENV)/.runtime: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

serve: $(VENV)/.runtime
	$(BIN)/tunery serve

# Two test processes: most tests wait on servers, workers and heartbeats rather than compute.
# `make test` is the quick tier (everything not marked slow: a few minutes on the 2-core box);
# `make test-slow` is the live-server tier (real jobs through the SDKs, browser, torchrun, abuse:
# about 17 minutes there). CI runs both. --durations shows what to trim next.
test: $(VENV)/.dev
	$(BIN)/python -m pytest -n 2 -m "not slow" --durations=15

test-slow: $(VENV)/.dev
	$(BIN)/python -m pytest -n 2 -m slow --durations=15

test-all: test test-slow

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src
