# The two commands users need: `make demo` and `make test`. Both build .venv from the pins first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint typecheck unit install data bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

data:
	@bash scripts/ensure-data.sh

demo: install data
	$(BIN)/hamu demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy hamu hamu_pipeline bench examples

unit: install data
	# two workers, whole files each (module fixtures stay whole): the end-to-end files mostly wait on their
	# Prefect server and subprocesses (~36% of one core, measured), so the suite overlaps them with the rest
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test: lint typecheck unit

bench: install data
	$(BIN)/python bench/step_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
