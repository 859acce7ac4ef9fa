# make demo: install if needed, render a sample, train pmni-fast on CPU, export, evaluate.
# make test: install if needed, run the test suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pmni-installed
# Allocation-heavy CPU training runs 1.5-2x faster on jemalloc (Debian libjemalloc2) than on glibc malloc.
# Looked up by the shell when a recipe runs, not when make reads this file: on a fresh machine the install step
# (a prerequisite) is what puts the library there, so the very first `make demo` already trains with it.
JEMALLOC_GLOB ?= /usr/lib/*-linux-gnu/libjemalloc.so.2
WITH_JEMALLOC = jem=$$(ls $(JEMALLOC_GLOB) 2>/dev/null | head -n 1); \
	if [ -n "$$jem" ]; then echo "==> using jemalloc: $$jem"; \
	else echo "==> jemalloc not found: glibc malloc (CPU training 1.5-2x slower; apt-get install libjemalloc2)"; fi; \
	LD_PRELOAD=$$jem

.PHONY: install test demo bench clean

install: $(STAMP)

# A line per step and pip's own output (progress bars on a terminal): a first install takes ~4 minutes.
$(STAMP): pyproject.toml
	@echo "==> [1/4] Debian packages (scripts/install_system_deps.sh)"
	@bash scripts/install_system_deps.sh
	@echo "==> [2/4] virtual environment $(VENV)"
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "==> [3/4] pip"
	$(PY) -m pip install --upgrade pip
	@echo "==> [4/4] pmni and its Python dependencies (torch, nerfstudio, ...; ~4 minutes on a fresh machine)"
	$(PY) -m pip install -e '.[dev]'
	@touch $(STAMP)
	@echo "==> installed"

# The suite trains many small models (17 minutes on 2 idle cores with jemalloc); the slowest tests are listed.
test: install
	@$(WITH_JEMALLOC) $(PY) -m pytest --durations=15 -q

demo: install
	@$(WITH_JEMALLOC) $(VENV)/bin/pmni-demo

# Issue-3 benchmark: 20-view bunny, quarter resolution, 5 held-out views; throughput, then 5 minutes of pmni-fast.
BENCH_DATA := bench-output/bunny20
bench: install
	@test -f $(BENCH_DATA)/synth.json || $(VENV)/bin/pmni-synth --mesh ../shared/data/meshes/stanford-bunny.obj \
		--output $(BENCH_DATA) --num-views 20 --world-scale 1000 --depth-scale-noise 0.3
	@$(WITH_JEMALLOC) $(PY) benchmarks/bench_model.py throughput --data $(BENCH_DATA) --downscale 4
	@$(WITH_JEMALLOC) $(PY) benchmarks/bench_model.py quality --data $(BENCH_DATA) --downscale 4 --minutes 5 \
		--eval-at 1 2 3 4 5

clean:
	rm -rf $(VENV) outputs demo-output test-output bench-output
