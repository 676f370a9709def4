# AICode Manager — developer and operator entry points (docs/operations.md describes each).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8080
# CONFIG=path/to/config.yaml: the config file for migrate, config-validate and env-check
# (default: $$AICLI_CONFIG, else config/config.yaml if present, else built-in defaults).
CONFIG ?=
CONFIG_ARG = $(if $(CONFIG),--config $(CONFIG))
DIST ?= dist
BENCH := bench/run.py
BENCH_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help run test test-integration test-performance bench lint build migrate config-validate env-check \
	backup security-check web clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## help: list the targets
help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)

## run: install into .venv, migrate and serve the embedded default (SQLite, in-process broker)
run: $(STAMP)
	$(BIN)/aicli-api migrate
	$(BIN)/aicli-api serve --host $(HOST) --port $(PORT)

## test: install into .venv and run the whole suite (first says which services and tools it lacks)
test: $(STAMP)
	@scripts/test_prerequisites.sh
	$(BIN)/pytest

## test-integration: the whole suite with PostgreSQL and Redis required (AICM_TEST_DATABASE_URL, AICM_TEST_REDIS_URL)
test-integration: $(STAMP)
	@if [ -z "$$AICM_TEST_DATABASE_URL" ] || [ -z "$$AICM_TEST_REDIS_URL" ]; then \
		echo "test-integration: set AICM_TEST_DATABASE_URL (a PostgreSQL database it may wipe) and" \
			"AICM_TEST_REDIS_URL (a Redis database number it may flush)" >&2; \
		exit 2; \
	fi
	@AICM_REQUIRE_SERVICES=1 scripts/test_prerequisites.sh
	AICM_REQUIRE_SERVICES=1 $(BIN)/pytest

## test-performance: the benchmarks (bench/run.py; BENCH_ARGS passes options)
test-performance: bench

## bench: run bench/run.py (BENCH_ARGS passes options)
bench: $(STAMP)
	@if [ ! -f $(BENCH) ]; then \
		echo "bench: $(BENCH) does not exist yet: there are no benchmarks to run" >&2; \
		exit 2; \
	fi
	$(BIN)/python $(BENCH) $(BENCH_ARGS)

## lint: ruff check and format check, and the layer contract (import-linter, [tool.importlinter])
lint: $(STAMP)
	$(BIN)/ruff check aicm tests scripts deploy bench
	$(BIN)/ruff format --check aicm tests scripts deploy bench
	$(BIN)/lint-imports

## build: wheel and sdist into $(DIST)/, and the launcher ./bin/aicli-api (the guide's entry point)
build: $(STAMP)
	$(BIN)/python -m pip install --quiet build
	$(BIN)/python -m build --outdir $(DIST) .
	install -d bin
	install -m 0755 deploy/bin/aicli-api bin/aicli-api
	@echo "built: $$(ls $(DIST)); run ./bin/aicli-api --version"

## web: rebuild the web console and GraphiQL (web/, needs Node 20+) into aicm/web/static/, which ships built
web:
	cd web && npm ci --no-audit --no-fund && npm run build

## migrate: apply pending migrations to the configured database (CONFIG=... picks the file)
migrate: $(STAMP)
	$(BIN)/aicli-api migrate $(CONFIG_ARG)

## config-validate: load and validate the configuration (CONFIG=... picks the file), every problem listed
config-validate: $(STAMP)
	$(BIN)/aicli-api --config-check $(CONFIG_ARG)

## env-check: which environment variables the configuration needs, set or missing (values never shown)
env-check: $(STAMP)
	$(BIN)/python deploy/env_check.py $(CONFIG_ARG)

## backup: scripts/backup.sh (BACKUP_DIR, default /backup/aicli-web; 30-day retention)
backup: $(STAMP)
	AICM_PYTHON=$(abspath $(BIN))/python scripts/backup.sh $(CONFIG_ARG)

## security-check: scripts/security_check.sh (LOG_FILE, default /var/log/aicli-web/app.log)
security-check:
	scripts/security_check.sh

clean:
	rm -rf $(VENV) build $(DIST) bin *.egg-info
