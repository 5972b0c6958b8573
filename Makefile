# Cardline: `make demo` runs the main job, `make test` runs every check CI runs.
#
# Two installs, each behind its own stamp: `make demo` installs the core package only
# (no test tools, no PC/SC or CUPS driver, no build packages); `make test` adds the
# `dev` extra (which carries the `pcsc` and `cups` extras) and the system packages the
# tests drive. `make demo` then `make test` installs the rest; `make test` then
# `make demo` installs nothing more.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CORE   := $(VENV)/.installed-core
DEV    := $(VENV)/.installed-dev

.PHONY: demo test lint unit bench clean

$(VENV)/.system-demo: ops/system-deps.sh
	@bash ops/system-deps.sh demo
	@mkdir -p $(VENV) && touch $@

$(BIN)/python: | $(VENV)/.system-demo
	@$(PYTHON) -m venv --clear $(VENV)
	@touch $(VENV)/.system-demo

$(VENV)/.system-test: ops/system-deps.sh | $(BIN)/python
	@bash ops/system-deps.sh test
	@touch $@

$(CORE): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(DEV): pyproject.toml $(CORE) $(VENV)/.system-test
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

demo: $(CORE)
	$(BIN)/cardline demo

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy schemas db producers workers stations ops
	$(BIN)/lint-imports

unit: $(DEV)
	$(BIN)/pytest tests/unit -q

test: $(DEV)
	$(BIN)/python -m ops.services
	$(MAKE) --no-print-directory lint
	$(BIN)/pytest -q -ra

bench: $(DEV)
	$(BIN)/python -m ops.bench

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
