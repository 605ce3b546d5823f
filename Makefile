# The README's front door: `make demo` and `make test`. Everything runs from the project's own virtualenv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-slow test-all test-unit test-integration test-gpu lint format bench clean

$(STAMP): pyproject.toml setup.py constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints-cpu.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Caption sample images with the built-in model on a local Ray; results in ./out/
demo: $(STAMP)
	$(BIN)/python -m llava_batch.jobs.demo --out out

## The suite every change runs: unit tests and an integration smoke set (no GPU; under 8 minutes on 2 cores)
test: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu and not slow" -q --durations=25

## The rest (marked slow): faults, clusters, the other job variants, benchmark scripts; CI runs it after `test`
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow and not gpu" -q --durations=25

test-all: test test-slow

test-unit: $(STAMP)
	$(BIN)/python -m pytest -m "not integration and not gpu" -q

test-integration: $(STAMP)
	$(BIN)/python -m pytest -m "integration and not gpu" -q

## Only on a machine with a CUDA GPU
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -m gpu -q

lint: $(STAMP)
	$(BIN)/ruff check llava_batch pipeline jobs operators tests benchmarks training
	$(BIN)/ruff format --check llava_batch pipeline jobs operators tests benchmarks training

format: $(STAMP)
	$(BIN)/ruff format llava_batch pipeline jobs operators tests benchmarks training
	$(BIN)/ruff check --fix llava_batch pipeline jobs operators tests benchmarks training

clean:
	rm -rf $(VENV) out .pytest_cache
