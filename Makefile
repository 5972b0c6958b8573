# Cardline: `make demo` runs the main job, `make test` runs every check CI runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint unit bench clean

$(VENV)/.system: ops/system-deps.sh
	@bash ops/system-deps.sh
	@mkdir -p $(VENV) && touch $@

$(BIN)/python: | $(VENV)/.system
	@$(PYTHON) -m venv --clear $(VENV)
	@touch $(VENV)/.system

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

demo: $(STAMP)
	$(BIN)/cardline demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy schemas db producers workers stations ops
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

test: $(STAMP)
	$(BIN)/python -m ops.services
	$(MAKE) --no-print-directory lint
	$(BIN)/pytest -q -ra

bench: $(STAMP)
	$(BIN)/python -m ops.bench

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
