# Two commands do all the set-up: `make train` and `make test` (each builds .venv when needed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Every install takes its versions from the lock (requirements.lock, a pip constraints file; the Dockerfile uses it too).
LOCK := requirements.lock
# The torch build to install first (its version is the lock's); GPU users pick their CUDA build:
#   make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

.PHONY: venv train test test-fast bench lint lock clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(LOCK) pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e ".[dev]"
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

## Re-resolve every dependency to today's newest allowed versions into requirements.lock (review and commit it)
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet $(TORCH_SPEC)
	.lock-venv/bin/python -m pip install --quiet -e ".[dev]"
	.lock-venv/bin/python scripts/lock.py write $(LOCK)
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
