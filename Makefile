# Hashfed: `make serve` runs a federation; `make test` runs lint and every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HASHFED_HOST ?= 127.0.0.1
HASHFED_PORT ?= 8080
export HASHFED_HOST HASHFED_PORT

.PHONY: serve init test lint unit bench format clean venv openapi

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

init: $(STAMP)
	$(BIN)/hashfed server init

serve: init
	$(BIN)/hashfed server run

lint: $(STAMP)
	$(BIN)/ruff check federation clients tests bench
	$(BIN)/ruff format --check federation clients tests bench
	$(BIN)/mypy --strict federation clients

test: lint
	$(BIN)/python -m pytest

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

openapi: $(STAMP)
	$(BIN)/python -m federation.api.openapi > docs/openapi.json
	@echo "docs/openapi.json regenerated"

format: $(STAMP)
	$(BIN)/ruff format federation clients tests bench
	$(BIN)/ruff check --fix federation clients tests bench

bench: $(STAMP)
	$(BIN)/python bench/push_pull.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
