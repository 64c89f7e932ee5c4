# `make demo` and `make test` set up everything they need on a fresh Debian machine with Python 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format e2e unit sandbox-deps postgres-deps browser-deps terminal-deps clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv; \
	  else echo "Python's venv module is missing: run 'sudo apt-get install python3-venv' and retry."; exit 1; fi; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[local,dev,postgres,ray]'
	touch $(STAMP)

sandbox-deps:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq bubblewrap; \
	  else echo "bubblewrap is missing: run 'sudo apt-get install bubblewrap' and retry."; exit 1; fi; }

# The store's tests also run on a real PostgreSQL server (tests/postgres_fixture.py starts one);
# without it they are skipped.
postgres-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	  else echo "PostgreSQL is missing, so its tests are skipped: run 'sudo apt-get install postgresql' to run them."; fi; }

# The web UI's test drives Debian's Chromium (/usr/bin/chromium) through Playwright; without
# it that test is skipped.
browser-deps:
	@[ -x /usr/bin/chromium ] || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "Chromium is missing, so the web UI's test is skipped: run 'sudo apt-get install chromium' to run it."; fi; }

# The interactive session's tests drive a real `pullsmith` in a tmux terminal; without tmux they
# are skipped.
terminal-deps:
	@command -v tmux >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux; \
	  else echo "tmux is missing, so the session's terminal tests are skipped: run 'sudo apt-get install tmux' to run them."; fi; }

demo: $(STAMP) sandbox-deps
	bash examples/demo.sh

test: $(STAMP) sandbox-deps postgres-deps browser-deps terminal-deps lint
	$(BIN)/pytest -ra --durations=30

unit: $(STAMP) sandbox-deps postgres-deps terminal-deps
	$(BIN)/pytest -ra -m "not e2e"

e2e: $(STAMP) sandbox-deps
	$(BIN)/pytest -ra -m e2e

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
