# Two commands on a fresh machine:  make demo   and   make test
# Both create .venv and install everything first: torch pinned (see README "PyTorch and torchvision"), then
# every other package from the hashed lock (requirements.lock) with uv, which setup installs from PyPI.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
STAMP  := $(VENV)/.framebus-installed
UV_VERSION := 0.13.9
LOCK_FLAGS := --extra test --universal --python-version 3.11 --generate-hashes --no-emit-package torch

.PHONY: setup models ship-models demo check test test-unit bench lock doctor clean

# Bytecode is compiled at install (uv does not by default): where PYTHONDONTWRITEBYTECODE is set, as on these
# machines, every process would otherwise compile open_clip, transformers and diffusers from source on each
# start (loading the tiny CLIP took 8.0 s that way, 3.3 s compiled).
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip uv==$(UV_VERSION)
	$(BIN)/pip install -q torch==2.13.0
	$(UV) pip install -q --python $(BIN)/python --no-deps --require-hashes --compile-bytecode -r requirements.lock
	$(UV) pip install -q --python $(BIN)/python --no-deps -e .
	$(BIN)/python -m compileall -q streams agents models indexing topics loadtest
	$(BIN)/python -m framebus.models._torchvision_compat install
	$(BIN)/python -c "import torchvision, open_clip"
	touch $(STAMP)

setup: $(STAMP)

# The tiny models of FRAMEBUS_TRAIN_SEED (default 0): the shipped weights when they match the recipe,
# else trained once into the user cache (~/.cache/framebus; FRAMEBUS_CACHE_DIR overrides).
models: $(STAMP)
	$(BIN)/framebus models train

# Retrain seed 0 of the current recipes into models/tiny/, the weights the repository ships.
ship-models: $(STAMP)
	FRAMEBUS_MODEL_DIR=models/tiny FRAMEBUS_TRAIN_SEED=0 $(BIN)/framebus models train --force

demo: $(STAMP)
	$(BIN)/framebus demo

# Lint, format, layer contracts and declared dependencies: fast, before any test.
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/deptry .

test: check
	$(BIN)/python -m pytest -ra --durations=15

test-unit: $(STAMP)
	$(BIN)/python -m pytest -ra tests/unit

bench: $(STAMP)
	$(BIN)/python -m framebus.loadtest.bench_decode

doctor: $(STAMP)
	$(BIN)/framebus doctor

lock: $(STAMP)
	$(UV) pip compile pyproject.toml $(LOCK_FLAGS) --custom-compile-command "make lock" -o requirements.lock

clean:
	rm -rf $(VENV) framebus-data .pytest_cache
