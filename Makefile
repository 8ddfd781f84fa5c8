# Two commands for a fresh clone: `make run` (the pipeline with demo data) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install run test lint fmt stack-up stack-down clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/llm-usage stack up
	$(BIN)/llm-usage migrate

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install lint
	$(BIN)/pytest

stack-up: install
	$(BIN)/llm-usage stack up

stack-down: install
	$(BIN)/llm-usage stack down

clean:
	-$(BIN)/llm-usage stack down
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
