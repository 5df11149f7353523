# The two commands of the README: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Peers the tests check our simulators against (Debian packages).
TOOLS := mbpoll

.PHONY: demo test tools lint bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gridpilot demo

tools:
	@command -v $(TOOLS) >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(TOOLS); }

test: $(STAMP) tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/bench_dispatch.py
	$(BIN)/python bench/bench_drivers.py
	$(BIN)/python bench/bench_loop.py

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache
