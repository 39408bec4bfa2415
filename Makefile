# One task runner for the project. `make help` lists targets.
PY ?= python3

.PHONY: help install lint format test test-fast bench smoke
help:
	@echo "install  - editable install with test + dev extras"
	@echo "lint     - ruff lint + format check"
	@echo "format   - ruff format + autofix"
	@echo "test     - full test suite (what CI runs)"
	@echo "test-fast- tests without the 'slow' marker"
	@echo "bench    - benchmarks in experiments/benchmarks"
	@echo "smoke    - the README's main job on the embedded default"

install:
	$(PY) -m pip install -e ".[dev]"

lint:
	ruff check . && ruff format --check .

format:
	ruff format . && ruff check --fix .

test:
	$(PY) -m pytest -q -n 2

test-fast:
	$(PY) -m pytest -q -n 2 -m "not slow"

bench:
	$(PY) experiments/benchmarks/cross_node_attention.py

smoke:
	jaxfm pretrain --workdir runs/smoke
