# Every target creates its own virtualenv (.venv) on first use; nothing is installed by hand.
# Installs are pinned by constraints.txt (`make lock` refreshes it), so CI gets the same versions every day.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: demo test test-fast lint install browser lock clean

# The tool with every verb (export, app, tune): what `make demo` needs.
$(BIN)/.installed-all: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c constraints.txt -e '.[all]'
	touch $@

# ...and the test and lint tools (Playwright, notebooks, pytest, ruff).
$(BIN)/.installed: $(BIN)/.installed-all
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# Debian's Chromium for the demo page's browser test (tests/app/test_app.py); Playwright (a dev dependency)
# drives it, so no browser is downloaded. Needs root or sudo; without Chromium that test is skipped.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; }
	@chromium --version 2>/dev/null

demo: $(BIN)/.installed-all
	$(BIN)/hf-cnn-ft demo

lint: $(BIN)/.installed
	$(BIN)/ruff check hf_cnn_ft tests benchmarks
	$(BIN)/ruff format --check hf_cnn_ft tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

# The newest versions that pyproject.toml allows, installed in a scratch virtualenv and written down.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	.venv-lock/bin/python -m pip freeze --exclude-editable --disable-pip-version-check > constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) outputs data
