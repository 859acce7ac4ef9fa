# make demo: install if needed, render a sample, train pmni-fast on CPU, export, evaluate.
# make test: install if needed, run the test suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pmni-installed
# Allocation-heavy CPU training runs 1.5-2x faster on jemalloc (Debian libjemalloc2) than on glibc malloc.
JEMALLOC := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/aarch64-linux-gnu/libjemalloc.so.2))

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
	LD_PRELOAD=$(JEMALLOC) $(VENV)/bin/pmni-demo

# Issue-3 benchmark: 20-view bunny, quarter resolution, 5 held-out views; throughput, then 5 minutes of pmni-fast.
BENCH_DATA := bench-output/bunny20
bench: install
	@test -f $(BENCH_DATA)/synth.json || $(VENV)/bin/pmni-synth --mesh ../shared/data/meshes/stanford-bunny.obj \
		--output $(BENCH_DATA) --num-views 20 --world-scale 1000 --depth-scale-noise 0.3
	LD_PRELOAD=$(JEMALLOC) $(PY) benchmarks/bench_model.py throughput --data $(BENCH_DATA) --downscale 4
	LD_PRELOAD=$(JEMALLOC) $(PY) benchmarks/bench_model.py quality --data $(BENCH_DATA) --downscale 4 --minutes 5 \
		--eval-at 1 2 3 4 5

clean:
	rm -rf $(VENV) outputs demo-output test-output bench-output
