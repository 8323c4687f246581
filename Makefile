# storyloom: `make demo` runs the main job on the shipped default, `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
#: extra flags for make train-clip, e.g. CLIP_TRAIN_ARGS="--device cuda --workers 15" on a GPU machine
CLIP_TRAIN_ARGS ?= --workers 2
#: extra flags for make train-captioner (same idea)
CAPTIONER_TRAIN_ARGS ?= --workers 2
#: extra flags for make train-storygen, e.g. STORYGEN_TRAIN_ARGS="--device cuda --workers 14 --max-minutes 20"
STORYGEN_TRAIN_ARGS ?= --workers 2
DEMO_DIR ?= demo-out

.PHONY: help env demo test test-all quality format bench lock train-clip train-captioner train-storygen clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-15s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

env: $(STAMP) ## create .venv from the pinned lock file

demo: $(STAMP) ## synthesize a shapes-world corpus, curate it, render one story
	$(PY) -m pipelines.cli.demo --out $(DEMO_DIR)

test: $(STAMP) ## run the fast test suite (slow / gpu / integration tests are marked and skipped)
	$(PY) -m pytest -q -p no:cacheprovider

test-all: $(STAMP) ## run every test, slow and integration ones included
	$(PY) -m pytest -q -p no:cacheprovider -m 'not gpu'

quality: $(STAMP) ## lint, format check and type check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP) ## run the benchmarks (tables on stdout, JSON under benchmarks/results/)
	$(PY) benchmarks/scenes.py
	$(PY) benchmarks/quality.py
	$(PY) benchmarks/curate_e2e.py
	$(PY) benchmarks/storygen_speed.py

train-clip: $(STAMP) ## train the small shapes-world CLIP shipped in models/shapes-clip
	$(PY) -m curate.training.clip --out models/shapes-clip $(CLIP_TRAIN_ARGS)

train-captioner: $(STAMP) ## train the small shapes-world captioner shipped in models/shapes-captioner
	$(PY) -m curate.training.captioner --out models/shapes-captioner $(CAPTIONER_TRAIN_ARGS)

train-storygen: $(STAMP) ## train the small shapes-world storygen model shipped in models/shapes-storygen
	$(PY) -m storygen.train --out models/shapes-storygen $(STORYGEN_TRAIN_ARGS)

lock: ## re-resolve the pinned environment from pyproject.toml
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip
	.lock-venv/bin/pip install -q -e '.[dev,dask]'
	{ echo "# Fully pinned environment, resolved from pyproject.toml's dependencies and the dev/dask extras."; \
	  echo "# Regenerate with: make lock"; .lock-venv/bin/pip freeze | grep -vi '^-e\|^storyloom'; } > requirements.lock
	rm -rf .lock-venv

clean: ## remove the environment and generated outputs
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
