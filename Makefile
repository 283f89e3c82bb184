# Handover: `make demo` runs it on embedded defaults, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BOTOCORE_DATA := jobs/storage/botocore-data/STAMP.json
# `make demo HOST=0.0.0.0 PORT=9000`
HOST ?= 127.0.0.1
PORT ?= 8080
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install format lint test bench demo services clean catalogs

install: $(VENV)/.installed $(BOTOCORE_DATA)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The S3 clients' botocore data cut to the store's operations (jobs/storage/s3model.py,
# about 12 MB less per process), made again from the botocore just installed and whenever
# the generator or the store's operation list (jobs/storage/s3.py) changes. Not in git.
$(BOTOCORE_DATA): $(VENV)/.installed jobs/storage/s3model.py jobs/storage/s3.py
	$(BIN)/python -m jobs.storage.s3model

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

services:
	bash scripts/ensure-services

# The notices' texts (jobs/notices.py), then the privacy center's (domain privacy,
# service/locale: service/privacy.py and its templates), then the archive index's (domain
# archive, jobs/locale: jobs/archive/index.py and its template): extract them, merge them into
# each language's .po, compile the .mo files Handover reads (kept in the tree, so the
# wheel and `make demo` need no Babel). A test fails while a text is untranslated or a .mo stale.
catalogs: install
	$(BIN)/pybabel extract --no-location --sort-output --project=Handover \
		--copyright-holder=Handover -o jobs/locale/handover.pot jobs/notices.py
	$(BIN)/pybabel update --ignore-obsolete --width=100 -D handover -d jobs/locale \
		-i jobs/locale/handover.pot
	$(BIN)/pybabel compile --statistics -D handover -d jobs/locale
	$(BIN)/pybabel extract --no-location --sort-output --project=Handover \
		--copyright-holder=Handover -F service/locale/babel.cfg -o service/locale/privacy.pot .
	$(BIN)/pybabel update --ignore-obsolete --width=100 -D privacy -d service/locale \
		-i service/locale/privacy.pot
	$(BIN)/pybabel compile --statistics -D privacy -d service/locale
	$(BIN)/pybabel extract --no-location --sort-output --project=Handover \
		--copyright-holder=Handover -F jobs/archive/babel.cfg -o jobs/locale/archive.pot .
	$(BIN)/pybabel update --ignore-obsolete --width=100 -D archive -d jobs/locale \
		-i jobs/locale/archive.pot
	$(BIN)/pybabel compile --statistics -D archive -d jobs/locale

# Three pytest workers: much of the suite waits on processes, servers and deadlines.
# worksteal: a worker that runs out takes queued tests from the busiest; tests marked
# `slow` are collected first (tests/conftest.py), so none of them starts last.
test: install services
	$(BIN)/pytest -n 3 --dist worksteal

bench: install services
	$(BIN)/python benchmarks/run.py

# What Handover needs to run, without the dev extra; the data dir (HANDOVER_DATA_DIR,
# default ~/.local/share/handover) keeps jobs, keys and the demo database across runs.
$(VENV)/.runtime-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

demo: $(VENV)/.runtime-installed
	PYTHONUNBUFFERED=1 $(BIN)/handover serve --host $(HOST) --port $(PORT)

# Build and tool caches only: Handover's data dir (jobs, keys, the demo database) is
# the user's, outside the tree; `handover demo reset` makes the demo new again.
clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
	@echo "Handover's data dir is kept: $${HANDOVER_DATA_DIR:-$${XDG_DATA_HOME:-$$HOME/.local/share}/handover}"
