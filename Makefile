# The two commands of the README: `make demo` and `make test`. Each creates .venv when missing.
# A Python >= 3.12 (deploy/find-python.sh looks for one, pyenv's included).
PYTHON ?= $(shell deploy/find-python.sh)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Tools the tests check against (Debian packages): mbpoll talks to our Modbus simulators,
# promtool (package prometheus) lints our metrics, alert rules and dashboard queries, and
# chromium with its driver runs the operator console in a real browser, and etcd (package
# etcd-server) coordinates the high-availability pair.
TOOL_COMMANDS := mbpoll promtool chromium chromedriver etcd
TOOL_PACKAGES := mbpoll prometheus chromium chromium-driver etcd-server

.PHONY: demo test tools lint bench clean

# A .venv made by an older Python is made again.
$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo 'make: no Python >= 3.12 found (set PYTHON=...)' >&2; exit 1; }
	$(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null || { rm -rf $(VENV); $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Options pass through: make demo ARGS="--api-port 9000 --data-dir /tmp/gp --config site.yaml"
ARGS ?=
demo: $(STAMP)
	$(BIN)/gridpilot demo $(ARGS)

# The tests check against mbpoll, promtool and chromium; when one is missing they are installed
# with apt-get (say so first). NO_APT=1 opts out: then install them yourself, or those tests
# fail. Each command is looked for (`command -v a b` answers for the last one only).
tools:
	@missing=; for c in $(TOOL_COMMANDS); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	[ -z "$$missing" ] || [ -n "$(NO_APT)" ] || { \
	  echo "make: installing Debian packages the tests use: $(TOOL_PACKAGES) (missing:$$missing; NO_APT=1 to skip)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(TOOL_PACKAGES); }

test: $(STAMP) tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q -n 2 -m "not serial"
	$(BIN)/pytest -q -m serial

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/bench_dispatch.py
	$(BIN)/python bench/bench_drivers.py
	$(BIN)/python bench/bench_loop.py
	$(BIN)/python bench/bench_api.py
	$(BIN)/python bench/bench_attacks.py
	$(BIN)/python bench/bench_mv.py
	$(BIN)/python bench/bench_rhythm.py
	$(BIN)/python bench/bench_bound_band.py
	$(BIN)/python bench/bench_foresight.py

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache
