# Every target creates its own virtualenv (.venv) on first use; nothing is installed by hand.
# Installs are pinned by constraints.txt (`make lock` refreshes it), so CI gets the same versions every day.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: demo test test-fast lint install browser litert lock clean

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
# LiteRT's converter in an environment of its own (pyproject.toml's `litert` extra says why): a virtualenv
# that sees .venv's packages behind its own, which are litert-torch and the older typing-extensions and
# pydantic it needs. `make test` builds it, so the LiteRT export tests run in CI.
LITERT_VENV := .venv-litert
PURELIB := import sysconfig; print(sysconfig.get_paths()["purelib"])
$(LITERT_VENV)/.installed: $(BIN)/.installed constraints-litert.txt
	$(PYTHON) -m venv $(LITERT_VENV)
	echo "import site; site.addsitedir('$$($(BIN)/python -c '$(PURELIB)')')" \
		> "$$($(LITERT_VENV)/bin/python -c '$(PURELIB)')/hf_cnn_ft_main_venv.pth"
	$(LITERT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints-litert.txt litert-torch
	touch $@

litert: $(LITERT_VENV)/.installed

lint: $(BIN)/.installed
	$(BIN)/ruff check hf_cnn_ft tests benchmarks
	$(BIN)/ruff format --check hf_cnn_ft tests benchmarks

test: lint litert
	HF_CNN_FT_LITERT_PYTHON=$(LITERT_VENV)/bin/python $(BIN)/python -m pytest -q

test-fast: lint litert
	HF_CNN_FT_LITERT_PYTHON=$(LITERT_VENV)/bin/python $(BIN)/python -m pytest -q -m "not slow"

# The newest versions that pyproject.toml allows, installed in a scratch virtualenv and written down.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	.venv-lock/bin/python -m pip freeze --exclude-editable --disable-pip-version-check > constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) $(LITERT_VENV) outputs data
