# The two commands of the README:
#   make demo   install, generate synthetic data, run gateway + five adapters
#   make test   install, lint, type-check, run every test (SQLite and PostgreSQL)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Browser tests (tests/test_pages_browser.py): Debian's chromium + playwright-core via npm.
CHROMIUM      ?= /usr/bin/chromium
BROWSER_STAMP := browser-tests/node_modules/.installed

DEMO_ARGS ?=

.PHONY: demo test install browser lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Idempotent: installs chromium (and node/npm) with apt only when missing and we are root;
# otherwise says loudly that the browser tests will be skipped.
$(BROWSER_STAMP): browser-tests/package-lock.json
	@missing=""; \
	[ -x $(CHROMIUM) ] || missing="$$missing chromium"; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq $$missing; \
	  else \
	    echo "!! missing:$$missing and cannot apt-get: browser tests will be SKIPPED"; \
	  fi; \
	fi
	@if command -v npm >/dev/null; then \
	  cd browser-tests && npm ci --no-audit --no-fund && touch node_modules/.installed; \
	fi

browser: $(BROWSER_STAMP)

install: $(STAMP) browser

demo: $(STAMP)
	$(BIN)/tongban demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy cannot follow setuptools' package-dir mapping (gateway/ is installed as
# tongban.gateway), so it reads a view of symlinks laid out as the installed package.
TYPECHECK_VIEW := build/typecheck
typecheck: $(STAMP)
	@rm -rf $(TYPECHECK_VIEW) && mkdir -p $(TYPECHECK_VIEW)/tongban
	@for f in tongban/*.py tongban/py.typed; do ln -s ../../../$$f $(TYPECHECK_VIEW)/tongban/; done
	@for d in gateway adapters audit primitives policies federation; do \
	  ln -s ../../../$$d $(TYPECHECK_VIEW)/tongban/$$d; done
	MYPYPATH=$(TYPECHECK_VIEW) $(BIN)/mypy

pytest: $(STAMP) browser
	$(BIN)/python -m pytest

test: lint typecheck pytest

# bench_gateway and bench_soak drive the load with wrk (Debian package 'wrk').
bench: $(STAMP)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk; } || \
	  echo "!! wrk missing: the gateway and soak benchmarks will fail"
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) demo-data .mypy_cache .ruff_cache .pytest_cache browser-tests/node_modules
