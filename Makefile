# storyloom: `make demo` runs the main job on the shipped default, `make test` runs the tests.
SHELL := /bin/bash
#: the Python versions the pinned environment installs on (keep in step with pyproject.toml)
SUPPORTED_PYTHONS := 3.11 3.12
empty :=
space := $(empty) $(empty)
comma := ,
SUPPORTED_TEXT := $(subst $(space), or ,$(SUPPORTED_PYTHONS))
#: a Python one-liner that fails on an unsupported interpreter
IS_SUPPORTED := import sys; sys.exit("%d.%d" % sys.version_info[:2] not in "$(SUPPORTED_PYTHONS)".split())
#: the interpreter .venv is built from: PYTHON=... to choose; by default the first of
#: python3, python3.12, python3.11 whose version is supported
ifeq ($(origin PYTHON),undefined)
PYTHON := $(firstword $(foreach p,python3 python3.12 python3.11,$(shell $(p) -c '$(IS_SUPPORTED)' >/dev/null 2>&1 && echo $(p))))
endif
PYTHON_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
#: stops make with one line when PYTHON is not a supported interpreter
check_python = $(if $(filter $(PYTHON_VERSION),$(SUPPORTED_PYTHONS)),,$(error storyloom needs Python \
  $(SUPPORTED_TEXT): $(if $(PYTHON),$(PYTHON) is $(or $(PYTHON_VERSION),not runnable),none of \
  python3$(comma) python3.12$(comma) python3.11 is); pass one as make PYTHON=/path/to/python3.12))
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
LOCK ?= requirements.lock
#: extra flags for make train-clip, e.g. CLIP_TRAIN_ARGS="--device cuda --workers 15" on a GPU machine
CLIP_TRAIN_ARGS ?= --workers 2
#: extra flags for make train-captioner (same idea)
CAPTIONER_TRAIN_ARGS ?= --workers 2
#: extra flags for make train-storygen, e.g. STORYGEN_TRAIN_ARGS="--device cuda --workers 14 --max-minutes 20"
STORYGEN_TRAIN_ARGS ?= --workers 2
DEMO_DIR ?= demo-out

.PHONY: help check-python env demo test test-all test-browser quality format bench lock train-clip train-captioner train-storygen clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-15s %s\n", $$1, $$2}'

$(STAMP): $(LOCK) pyproject.toml
	$(check_python)
	@# an install that did not finish (no stamp), or a .venv on another interpreter, is rebuilt
	@if [ -e $(VENV) ] && { [ ! -f $(STAMP) ] || [ "$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" != "$(PYTHON_VERSION)" ]; }; then \
	  echo "$(VENV) is incomplete or on another Python: rebuilding it with $(PYTHON) ($(PYTHON_VERSION))"; \
	  rm -rf $(VENV); fi
	@rm -f $(STAMP)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(LOCK)
	@# setuptools' note on editable installs of a flat layout is information only
	$(PY) -W "ignore:Editable installation:UserWarning" -m pip install -q --no-deps -e .
	@touch $@

check-python: ## check that PYTHON is a supported interpreter (one line when it is not)
	$(check_python)
	@echo "$(PYTHON) (Python $(PYTHON_VERSION))"

env: $(STAMP) ## create .venv from the pinned lock file

demo: $(STAMP) ## synthesize a shapes-world corpus, curate it, render one story; ends with the report's path
	$(PY) -m pipelines.cli.demo --out $(DEMO_DIR)

test: $(STAMP) ## run the fast test suite (slow / gpu / integration / browser tests are marked and skipped)
	$(PY) -m pytest -q -p no:cacheprovider

test-all: $(STAMP) ## run every test, slow and integration ones included (not gpu, not browser)
	$(PY) -m pytest -q -p no:cacheprovider -m 'not gpu and not browser'

test-browser: $(STAMP) ## the report tests in headless Chromium (apt-get install chromium chromium-driver)
	$(PY) -m pytest -q -p no:cacheprovider -m browser

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

train-storygen: $(STAMP) ## train the small shapes-world storygen model shipped in models/shapes-storygen (replaces it)
	$(PY) -m storygen.train --out models/shapes-storygen --force $(STORYGEN_TRAIN_ARGS)

lock: ## re-resolve the pinned environment from pyproject.toml
	$(check_python)
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip
	.lock-venv/bin/pip install -q -e '.[dev,dask]'
	@# public versions only: a local label (torch's +cpu) exists on one wheel index alone
	{ echo "# Fully pinned environment, resolved from pyproject.toml's dependencies and the dev/dask extras."; \
	  echo "# Regenerate with: make lock"; .lock-venv/bin/pip freeze | grep -vi '^-e\|^storyloom' \
	  | sed -E 's/^([^=]+==[^+]+)\+.*$$/\1/'; } > requirements.lock
	rm -rf .lock-venv

clean: ## remove the environment and generated outputs
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
