# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup browser demo test lint bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/lock.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c requirements/lock.txt -e ".[pretrained,bench,dev]"
	touch $@

demo: setup
	$(VENV)/bin/polytok demo

# Debian's Chromium renders the HTML report in a test; its test skips (saying why) where it cannot be had.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the report rendering test will be skipped"

test: setup browser
	$(PY) -m ruff check src tests benchmarks scripts
	$(PY) -m ruff format --check src tests benchmarks scripts
	$(PY) -m pytest -q -n 2 --durations=15

bench: setup
	$(PY) benchmarks/quantizers.py
