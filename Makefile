# Two commands do all the set-up: `make train` and `make test` (each builds .venv when needed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch build to install first; GPU users override it: make TORCH_SPEC="torch==2.13.0 --index-url ..."
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

.PHONY: venv train test test-fast bench lint docker clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

## Train the default run (synthetic imbalanced 3D data, 3D U-Net, dice_ce). Extra overrides: make train ARGS="loss=tversky"
train: venv
	$(BIN)/segtrain $(ARGS)

## Run the whole test suite (CLI runs, DDP and bf16 on CPU included)
test: venv
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q $(ARGS)

## Unit tests only (skips the slow CLI runs)
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

bench: venv
	$(BIN)/python scripts/bench_losses.py
	$(BIN)/python scripts/bench_train.py

lint: venv
	$(BIN)/hadolint Dockerfile

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
