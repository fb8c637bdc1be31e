# aigw developer commands. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config.example.yaml
HOST ?= 127.0.0.1
PORT ?= 8080

.DEFAULT_GOAL := help
.PHONY: help install install-dev run dev test test-fast lint fmt typecheck migrate bench bench-trace soak clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev,bedrock]"
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed ## install the gateway into ./.venv

install-dev: $(VENV)/.installed-dev ## install the gateway with test and lint tools

run: install ## install and run the gateway on the embedded default (SQLite, in-process state)
	$(BIN)/aigw serve --config $(CONFIG) --host $(HOST) --port $(PORT)

dev: install-dev ## run with auto-reload on code changes
	$(BIN)/aigw serve --config $(CONFIG) --host $(HOST) --port $(PORT) --reload

test: install-dev ## install and run the whole test suite
	$(BIN)/python -m pytest -q

lint: install-dev ## ruff (lint + format check) and mypy --strict
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/python scripts/check_module_size.py

fmt: install-dev ## format and auto-fix
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

typecheck: install-dev ## mypy --strict
	$(BIN)/mypy

migrate: install ## apply database migrations to the config's database_url
	$(BIN)/aigw migrate --config $(CONFIG)

bench: install-dev ## benchmark: gateway vs a bare forwarder vs direct (BENCH_PROFILE=embedded|production, BENCH_TRACE, BENCH_SCALE)
	$(BIN)/python -m bench.run

bench-trace: install-dev ## benchmark: tracing off vs sampled 100% and 1% (BENCH_SCALE defaults to 0.3)
	$(BIN)/python -m bench.trace

soak: install-dev ## the issue-8 soak: 10 minutes of mixed traffic against aigw serve, RSS sampled (SOAK_S=600)
	AIGW_SOAK_S=$${SOAK_S:-600} $(BIN)/python -m pytest -q -s tests/soak

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
