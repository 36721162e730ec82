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

.PHONY: demo test install browser lint typecheck pytest bench clean lock screenshots

# Installs exactly what requirements/dev.txt pins (hashes checked), then tongban itself.
$(STAMP): pyproject.toml client/pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps -e . -e ./client
	touch $(STAMP)

# What `make demo` alone needs: the runtime lock (no test tools).
DEMO_STAMP := $(VENV)/.installed-demo
$(DEMO_STAMP): pyproject.toml client/pyproject.toml requirements/demo.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements/demo.txt
	$(BIN)/pip install --quiet --no-deps -e . -e ./client
	touch $(DEMO_STAMP)

# Regenerate the lock files from pyproject.toml's ranges (needs the package index).
LOCK_FLAGS := --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
              --no-emit-find-links --extra federation --extra postgres --extra mysql --extra gmssl \
              --extra pyjwt
lock: $(STAMP)
	$(BIN)/pip-compile $(LOCK_FLAGS) -o requirements/demo.txt pyproject.toml
	$(BIN)/pip-compile $(LOCK_FLAGS) --extra dev -o requirements/dev.txt pyproject.toml

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

demo: $(DEMO_STAMP)
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

# Refresh the committed page screenshots (docs/screenshots/) in headless Chromium. Needs a
# CJK font, or every Chinese character is a box: installs Debian's fonts-noto-cjk when it can.
screenshots: $(STAMP) browser
	@if ! fc-list :lang=zh 2>/dev/null | grep -q .; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq fonts-noto-cjk; \
	  else \
	    echo "!! no CJK font (Debian: apt-get install fonts-noto-cjk): screenshots not refreshed"; exit 1; \
	  fi; \
	fi
	@fc-list :lang=zh | grep -q . || { echo "!! still no CJK font: screenshots not refreshed"; exit 1; }
	TONGBAN_SCREENSHOTS=$(CURDIR)/docs/screenshots $(BIN)/python -m pytest -q tests/test_pages_browser.py

# bench_gateway and bench_soak drive the load with wrk (Debian package 'wrk').
bench: $(STAMP)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk; } || \
	  echo "!! wrk missing: the gateway and soak benchmarks will fail"
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) demo-data .mypy_cache .ruff_cache .pytest_cache browser-tests/node_modules
