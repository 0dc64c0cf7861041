# interaction_jax developer commands. `make test` and `make quickstart` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv test test-fast quickstart reproduce lint clean

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,dev]'
	touch $(STAMP)

venv: $(STAMP)

# Full suite (what CI runs). Tests marked `slow` are included.
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

# Skip the slow tests while iterating.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS) tests

# Prepare a small synthetic data set with the tiny config and show one packed batch.
quickstart: $(STAMP)
	$(PY) -m interaction_jax.quickstart --config=configs/quickstart.py --workdir=runs/quickstart

# The reproduction experiment (experiments/interaction_small): prepare, train ~1 h on CPU, evaluate, report.
reproduce: $(STAMP)
	$(PY) experiments/interaction_small/run.py --workdir=runs/interaction_small

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .hypothesis
