# Two commands on a fresh machine:  make demo   and   make test
# Both create .venv and install everything first (torch first, pinned; see README "PyTorch and torchvision").

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.framebus-installed

.PHONY: setup demo test test-slow test-unit bench lock clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	$(BIN)/python -m models._torchvision_compat install
	$(BIN)/python -c "import torchvision, open_clip"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/framebus demo

test: $(STAMP)
	$(BIN)/python -m pytest -ra

test-slow: $(STAMP)
	$(BIN)/python -m pytest -ra -m slow

test-unit: $(STAMP)
	$(BIN)/python -m pytest -ra tests/unit

bench: $(STAMP)
	$(BIN)/python -m loadtest.bench_decode

lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | sed 's/+cpu//' > constraints.txt

clean:
	rm -rf $(VENV) framebus-data .pytest_cache
