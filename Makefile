# Two commands on a fresh machine:  make demo   and   make test
# Both create .venv and install everything first (torch first, pinned; see README "PyTorch and torchvision").

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.framebus-installed

.PHONY: setup models demo test test-unit bench lock clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	$(BIN)/python -m framebus.models._torchvision_compat install
	$(BIN)/python -c "import torchvision, open_clip"
	touch $(STAMP)

setup: $(STAMP)

# The tiny models, trained on the synthetic world into framebus-data/models when missing or stale
# (a few minutes, once; deterministic). The demo, the tests and the benchmarks share them.
models: $(STAMP)
	$(BIN)/framebus models train --data-dir framebus-data

demo: $(STAMP)
	$(BIN)/framebus demo

test: models
	$(BIN)/python -m pytest -ra --durations=15

test-unit: $(STAMP)
	$(BIN)/python -m pytest -ra tests/unit

bench: $(STAMP)
	$(BIN)/python -m framebus.loadtest.bench_decode

lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | sed 's/+cpu//' > constraints.txt

clean:
	rm -rf $(VENV) framebus-data .pytest_cache
