# driftscope: every target sets up .venv first (Python 3.11; torch is taken from local disk).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install --quiet --disable-pip-version-check
CORE   := $(VENV)/.installed-core
FULL   := $(VENV)/.installed-full

.PHONY: setup setup-core demo test bench clean

# the package and its core dependencies: all the demo needs
$(CORE): pyproject.toml Makefile
	@echo "setup: creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	@echo "setup: installing torch 2.14.1 and torchvision 0.29.1 (about a minute, quiet)"
	$(PIP) torch==2.14.1 torchvision==0.29.1
	@echo "setup: installing driftscope and its core dependencies"
	$(PIP) -e .
	touch $(CORE)

# plus the extras the tests and benchmarks use: dev tools, Flower (pulls Ray), torch-cka, and
# the export backends (TensorBoard, MLflow, W&B), and PEFT for the LoRA scenario
$(FULL): $(CORE)
	@echo "setup: installing the test extras (dev tools, benchmarks, Flower with Ray, TensorBoard, MLflow, W&B, PEFT)"
	$(PIP) -e '.[dev,bench,flower,tensorboard,mlflow,wandb,lora]'
	touch $(FULL)

setup-core: $(CORE)
setup: $(FULL)

## the main job: FedAvg vs SCAFFOLD vs FedPVR on the embedded digits, and where drift lives
demo: setup-core
	$(BIN)/driftscope reproduce

## the whole test suite: lint, format check, type check, tests (notebooks included), then the
## float-comparing tests (marker kernels) under the generic CPU kernels another machine may use
test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	MPLBACKEND=Agg $(BIN)/python -m pytest
	@echo "test: the float-comparing tests again with PyTorch's generic CPU kernels (as on another CPU)"
	ATEN_CPU_CAPABILITY=default MPLBACKEND=Agg $(BIN)/python -m pytest -q -m kernels

## benchmarks (not part of the tests): writes benchmarks/results/latest.json and the README table
bench: setup
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf runs figures .pytest_cache .ruff_cache .mypy_cache
