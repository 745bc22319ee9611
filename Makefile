# predictor: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench bench-quick demo clean

$(STAMP): requirements.txt requirements-dev.txt requirements-nobuild.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation -r requirements-nobuild.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

## run: start the daemon on the embedded default config
run: $(STAMP)
	$(VENV)/bin/predictord

## test: create the virtualenv from the pins if needed, then run every test
test: $(STAMP)
	$(PY) -m pytest -n 2 --timeout=900

## lint: ruff and mypy, zero findings expected
lint: $(STAMP)
	$(VENV)/bin/ruff check predictor bench tests
	$(VENV)/bin/ruff format --check predictor bench tests
	$(VENV)/bin/mypy predictor

## bench: run every benchmark in bench/ and write BENCHMARKS.md
bench: $(STAMP)
	$(PY) -m bench

bench-quick: $(STAMP)
	$(PY) -m bench --quick

## demo: start the daemon, replay bench/data/nile.csv through it, watch, snapshot, drain
demo: $(STAMP)
	bash deployment/demo.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache run
