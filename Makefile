# The two commands in README: `make pipeline` (main job) and `make test`. Each installs first.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install pipeline test bench

install:
	# torch first: 2.13.0 is a CPU wheel on machines without CUDA; keep an existing torch.
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "torch==2.13.0"
	# DS_BUILD_OPS=0: DeepSpeed builds its C++/CUDA ops lazily (JIT) on first use.
	DS_BUILD_OPS=0 $(PIP) install -e ".[dev]"
	# OpenRLHF without its deps (it pins other ray/transformers/deepspeed and needs flash-attn):
	# tests read its argparse source and load data with its CPU-only datasets package.
	$(PIP) install --no-deps "openrlhf==0.11.2" "pylatexenc>=2.10"

pipeline: install
	$(PYTHON) -m chimed_ray pipeline --config configs/pipeline/tiny.yaml

test: install
	$(PYTHON) -m pytest tests -q

bench: install
	for script in benchmarks/*.py; do $(PYTHON) $$script || exit 1; done
