# arserve: `make install` once, then `make serve` or `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install serve test lint train bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,bench]'

# make serve: app/serve.py's launcher (docs/security.md) on ARSERVE_HOST:ARSERVE_PORT, default 127.0.0.1:8000
serve: install
	$(BIN)/python -m app.serve

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# make train R=nade-mnist: train (or resume) models/recipes/$(R).toml, then evaluate and export it
train: install
	$(BIN)/python -m models.train models/recipes/$(R).toml

# make bench [Q=1]: the benchmark suite on the shipped models (Q=1: the quick smoke run, under a minute)
bench: install
	$(BIN)/python -m bench $(if $(Q),--quick,)

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
