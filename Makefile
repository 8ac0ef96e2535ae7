# The one entry point. `make test` is what the README and CI run.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
BUF := node_modules/.bin/buf
PROTOS := $(wildcard protos/darkroom/v1/*.proto)
CONTRACT := $(PROTOS) protos/setup.py protos/pyproject.toml
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k submit"`.
PYTEST_ARGS ?=
# Extra bench arguments, e.g. `make bench BENCH_ARGS=--quick`.
BENCH_ARGS ?=

.PHONY: help install generate lint test bench bench-gpu demo up down migrate jobs events gateway generator reconciler webhooks tiny-model chaos image-smoke

help:  ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(VENV)/.contract node_modules/.installed  ## One .venv: the contract built from protos/, client and server editable.

# The three distributions (protos/, clients/python/, this folder), client and server editable.
# PYTHONWARNINGS quiets setuptools' notice about editable installs, which is not ours to act on.
$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	PYTHONWARNINGS=ignore $(PY) -m pip install -q ./protos -e ./clients/python -e '.[generator,dev]'
	touch $(VENV)/.contract $@

# The contract's wheel generates darkroom.v1 from protos/ at build time; rebuild it when they change.
$(VENV)/.contract: $(CONTRACT) | $(VENV)/.installed
	$(PY) -m pip install -q --force-reinstall --no-deps ./protos
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --silent --no-audit --no-fund
	touch $@

generate: $(VENV)/.contract  ## Rebuild and reinstall darkroom.v1 (darkroom-contract) from protos/.

lint: install  ## ruff, mypy --strict, buf lint, buf breaking against main.
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(BUF) lint
	if git rev-parse -q --verify refs/heads/main >/dev/null; then $(BUF) breaking --against '.git#branch=main'; fi

test: lint  ## Lint, then every test (starts throwaway Postgres/Redis when none is running).
	rc=0; $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests for: $(PYTEST_ARGS)"; [ -n "$(PYTEST_ARGS)" ]; \
	else exit $$rc; fi

bench: $(VENV)/.contract  ## Every figure beside its baseline: bench-results/report.{md,json}.
	$(PY) -m bench $(BENCH_ARGS)

bench-gpu: $(VENV)/.contract  ## SD 1.5-sized random pipeline on the GPU (never in CI).
	$(PY) -m bench.gpu $(BENCH_ARGS)

demo: $(VENV)/.contract  ## Prompt in, progress bar, PNG out: the whole stack, then stop it (`make up` keeps the page).
	$(PY) -m darkroom.services.stack demo

up: $(VENV)/.contract  ## Start the stack in the background (Jobs :50051, Events :50052, page http://127.0.0.1:8080/).
	$(PY) -m darkroom.services.stack up

down:  ## Stop what `make up` started.
	$(PY) -m darkroom.services.stack down

migrate: install  ## Upgrade the database at DARKROOM_DATABASE_URL to the latest schema.
	$(PY) -m darkroom.migrate

jobs: install  ## Run the Jobs service (settings from DARKROOM_* variables).
	$(PY) -m darkroom.services.jobs

events: install  ## Run the Events service.
	$(PY) -m darkroom.services.events

gateway: install  ## Run the HTTP gateway and its page (DARKROOM_GATEWAY_ADDRESS, default 127.0.0.1:8080).
	$(PY) -m darkroom.services.gateway

generator: install tiny-model  ## Run one Generator (DARKROOM_GENERATOR_MODEL_PATH: folder or HF id).
	$(PY) -m darkroom.services.generator

reconciler: install  ## Run the reconciler (requeues lost work; safe to run several).
	$(PY) -m darkroom.services.reconciler

webhooks: install  ## Run a webhook delivery worker (signed POSTs from the outbox; safe to run several).
	$(PY) -m darkroom.services.webhooks

chaos: install  ## 2,000 jobs under random faults (kills, SIGTERMs past queue deadlines, flushes, Redis refusing writes, poison, junk, slow uploads), then the checker's table.
	$(PY) -m tests.faults.chaos $(CHAOS_ARGS)

tiny-model: .darkroom/models/tiny-sd/model_index.json  ## Build the tiny random Stable Diffusion model.

.darkroom/models/tiny-sd/model_index.json: services/generator/tiny_model.py | $(VENV)/.contract
	TRANSFORMERS_VERBOSITY=error $(PY) -m darkroom.services.generator.tiny_model .darkroom/models/tiny-sd

image-smoke: install tiny-model  ## Build both images, run one job through them (root + Docker; not in CI).
	deploy/image-smoke.sh
