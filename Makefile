# The two Quick start commands: `make demo` and `make test`. Each sets up .venv from scratch if needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

demo: $(BIN)/python
	@echo "Installing fedml, torch and matplotlib into $(VENV) (about 2 minutes the first time, seconds after)..."
	$(BIN)/pip install -q -e ".[plots]"
	$(BIN)/python -c "import fedml; fedml.run_simulation()"

lint: $(BIN)/python
	@echo "Installing fedml with its dev tools into $(VENV) (about 2 minutes the first time, seconds after)..."
	$(BIN)/pip install -q -e ".[dev,mpi,grpc,mqtt,plots,privacy,data,tensorboard,mlflow]"
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	scripts/ensure_mosquitto.sh
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadgroup
