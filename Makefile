# hf-recycle developer commands. `make test` and `make demo` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# On a machine without CUDA, install the CPU build of torch first (it is what
# `pip install torch==2.13.0` finds here); elsewhere let pip choose.
TORCH_CPU ?= torch==2.13.0
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)

.PHONY: install test test-fast lint format bench demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
ifneq ($(HAS_CUDA),yes)
	$(BIN)/python -m pip install -q "$(TORCH_CPU)"
endif
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

# Everything but the tests marked slow (Trainer runs, subprocess kills, the demo, big searches).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check hf_recycle tests benchmarks
	$(BIN)/ruff format --check hf_recycle tests benchmarks

format: install
	$(BIN)/ruff check --fix hf_recycle tests benchmarks
	$(BIN)/ruff format hf_recycle tests benchmarks

demo: install
	$(BIN)/python -m hf_recycle.demo --figure docs/demo_pareto.png

# mergekit (the peer in benchmarks/merge_throughput.py) lives in its own venv: its pins
# conflict with ours. Same CPU torch as ours on machines without CUDA.
MKVENV := benchmarks/_work/mkvenv

$(MKVENV)/bin/mergekit-yaml:
	$(PYTHON) -m venv $(MKVENV)
ifneq ($(HAS_CUDA),yes)
	$(MKVENV)/bin/python -m pip install -q "$(TORCH_CPU)"
endif
	$(MKVENV)/bin/python -m pip install -q mergekit==0.1.5

bench: install $(MKVENV)/bin/mergekit-yaml
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
