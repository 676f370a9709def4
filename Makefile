# AICode Manager — developer and operator entry points.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test test-integration test-performance bench lint build migrate config-validate env-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: install into .venv, migrate and serve the embedded default (SQLite, in-process broker)
run: $(STAMP)
	$(BIN)/aicli-api migrate
	$(BIN)/aicli-api serve --host $(HOST) --port $(PORT)

## test: install into .venv and run the whole suite
test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check aicm tests scripts
	$(BIN)/ruff format --check aicm tests scripts

migrate: $(STAMP)
	$(BIN)/aicli-api migrate

config-validate: $(STAMP)
	$(BIN)/aicli-api --config-check

clean:
	rm -rf $(VENV) build dist *.egg-info
