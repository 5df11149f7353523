# The two commands of the README: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Tools the tests check against (Debian packages): mbpoll talks to our Modbus simulators,
# promtool (package prometheus) lints our metrics, alert rules and dashboard queries.
TOOL_COMMANDS := mbpoll promtool
TOOL_PACKAGES := mbpoll prometheus

.PHONY: demo test tools lint bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gridpilot demo

tools:
	@command -v $(TOOL_COMMANDS) >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(TOOL_PACKAGES); }

test: $(STAMP) tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/bench_dispatch.py
	$(BIN)/python bench/bench_drivers.py
	$(BIN)/python bench/bench_loop.py
	$(BIN)/python bench/bench_api.py

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache
