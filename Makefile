# predictor: the two commands a newcomer needs are `make run` and `make test`.
#
# Two install levels share one virtualenv:
#   $(RUNTIME) - requirements.txt only: what `make run` needs; no compiler, no test tooling;
#   $(STAMP)   - requirements-dev.txt too (tests, lint, docs, examples, benchmarks) and the
#                test oracle built from source (requirements-nobuild.txt): what `make test` needs.
PYTHON ?= python3.11
VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip --disable-pip-version-check
RUNTIME := $(VENV)/.runtime
STAMP   := $(VENV)/.installed
CONFIG  ?=

.PHONY: run test lint docs bench bench-quick soak demo clean

$(RUNTIME): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -r requirements.txt
	$(PIP) install --quiet --no-deps -e .
	$(PIP) check
	touch $(RUNTIME)

$(STAMP): $(RUNTIME) requirements-dev.txt requirements-nobuild.txt
	$(PIP) install --quiet -r requirements-dev.txt
	$(PIP) install --quiet --no-build-isolation -r requirements-nobuild.txt
	$(PIP) check
	touch $(STAMP)

## run: start the daemon (runtime requirements only); CONFIG=path for a config file
run: $(RUNTIME)
	$(VENV)/bin/predictord $(if $(CONFIG),--config $(CONFIG))

## test: install the development set if needed, then run every test
test: $(STAMP)
	$(PY) -m pytest -n 2 --timeout=900

## lint: ruff and mypy, zero findings expected
lint: $(STAMP)
	$(VENV)/bin/ruff check predictor bench tests examples docs/hooks
	$(VENV)/bin/ruff format --check predictor bench tests examples docs/hooks
	$(VENV)/bin/mypy predictor

## docs: the users' documentation into site/ (strict: any warning fails)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

## bench: run every benchmark in bench/ and write BENCHMARKS.md
bench: $(STAMP)
	$(PY) -m bench

bench-quick: $(STAMP)
	$(PY) -m bench --quick

## soak: the long reliability run (snapshot kills, admin slowloris, oversized tick messages)
soak: $(STAMP)
	$(PY) -m bench.reliability

## demo: start the daemon, replay bench/data/nile.csv through it, watch, snapshot, drain
demo: $(STAMP)
	bash deployment/demo.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache run site
