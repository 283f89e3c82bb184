# Handover: `make demo` runs it on embedded defaults, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install format lint test bench demo services clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

services:
	bash scripts/ensure-services

# Three pytest workers: much of the suite waits on processes, servers and deadlines.
test: install services
	$(BIN)/pytest -n 3 --dist load

bench: install services
	$(BIN)/python benchmarks/run.py

demo: install
	$(BIN)/handover serve

clean:
	rm -rf $(VENV) .handover .mypy_cache .ruff_cache .pytest_cache
