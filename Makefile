# Two set-up commands: `make demo` and `make test`. Each creates .venv if missing, installs the project (building
# llama-cpp-python with CPU flags derived from this machine, cached), builds the default model, then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.embellama-installed
PYTEST_ARGS ?=

.PHONY: install model demo test lint typecheck stress bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml scripts/build_llama_cpp.py
	# torch first, pinned: the CPU build lies on this machine's disk (a bare `torch` would pull a CUDA build)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) scripts/build_llama_cpp.py
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

model: $(STAMP)
	$(PY) -m embellama.cli default-model

demo: model
	$(PY) -m embellama.cli demo

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(STAMP)
	$(PY) -m mypy

test: model lint typecheck
	$(PY) -m pytest --cov --cov-report=term --cov-fail-under=90 $(PYTEST_ARGS)

stress: model
	$(PY) -m pytest -m stress -o addopts='' $(PYTEST_ARGS)

bench: model
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage* htmlcov
