# driftscope: every target sets up .venv first (Python 3.11; torch is taken from local disk).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,bench,flower]'
	touch $(STAMP)

setup: $(STAMP)

## the main job: FedAvg vs SCAFFOLD vs FedPVR on the embedded digits, and where drift lives
demo: setup
	$(BIN)/driftscope reproduce --out runs/reproduce

## the whole test suite: lint, format check, type check, tests (notebooks included)
test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	MPLBACKEND=Agg $(BIN)/python -m pytest

## benchmarks (not part of the tests): writes benchmarks/results/latest.json and the README table
bench: setup
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf runs figures .pytest_cache .ruff_cache .mypy_cache
