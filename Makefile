# The two commands a new user runs: `make demo` and `make test`.
# Each builds .venv from nothing the first time (and again when pyproject.toml changes).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint schemas clean chromium poppler

# The CPU build of torch goes in first: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vpatient demo --out demo_output --seed 0

# The dashboard's browser test drives Debian's Chromium (Playwright's own browser download is not used).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

chromium:
	command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)

# Report tests render a PDF's first page with pdftoppm (Debian's poppler-utils).
poppler:
	command -v pdftoppm >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq poppler-utils)

test: $(STAMP) chromium poppler
	$(BIN)/python -m pytest -q --durations=15

# For development: the tests not marked slow (model training, notebooks, the browser, benchmarks at
# small size). CI runs `make test`, which still runs everything.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Lint and type checks (mypy's settings, and which modules are strict, live in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check vpatient tests
	$(BIN)/ruff format --check vpatient tests
	$(BIN)/mypy

schemas: $(STAMP)
	$(BIN)/vpatient schemas export data_schemas

clean:
	rm -rf $(VENV) demo_output .pytest_cache
