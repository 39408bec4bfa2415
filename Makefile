# One task runner for the project. `make help` lists targets.
PY ?= python3
RUFF ?= ruff

.PHONY: help install _need-ruff lint format test test-fast test-slow ci bench smoke
help:
	@echo "install   - editable install with test + dev extras (pytest, ruff, pre-commit)"
	@echo "lint      - ruff lint + format check (needs the dev extra: make install)"
	@echo "format    - ruff format + autofix (needs the dev extra)"
	@echo "test      - the default test suite (the 'slow' marker excluded by pyproject addopts)"
	@echo "test-fast - the same, with the slow exclusion spelled out"
	@echo "test-slow - only the slow end-to-end tests"
	@echo "ci        - what CI runs: .ci/run (fresh venv, default suite, lint, slow tests, version floors, py3.12)"
	@echo "bench     - benchmarks in experiments/benchmarks"
	@echo "smoke     - the README's main job on the embedded default"

install:
	$(PY) -m pip install -e ".[dev]"

_need-ruff:
	@command -v $(RUFF) >/dev/null 2>&1 || { \
	  echo "make lint/format: ruff is not installed; run 'make install' (pip install -e \".[dev]\")"; \
	  exit 1; }

lint: _need-ruff
	$(RUFF) check . && $(RUFF) format --check .

format: _need-ruff
	$(RUFF) format . && $(RUFF) check --fix .

test:
	$(PY) -m pytest -q -n 2

test-fast:
	$(PY) -m pytest -q -n 2 -m "not slow"

test-slow:
	$(PY) -m pytest -q -n 2 -m slow

ci:
	bash .ci/run

bench:
	$(PY) experiments/benchmarks/cross_node_attention.py

smoke:
	jaxfm pretrain --workdir runs/smoke
