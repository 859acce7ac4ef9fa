# make demo: install if needed, render a sample, train pmni-fast on CPU, export, evaluate.
# make test: install if needed, run the test suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pmni-installed

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@bash scripts/install_system_deps.sh
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: install
	$(PY) -m pytest -q

demo: install
	$(VENV)/bin/pmni-demo

bench: install
	$(PY) benchmarks/bench_model.py

clean:
	rm -rf $(VENV) outputs demo-output test-output bench-output
