# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup demo test lint bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/lock.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c requirements/lock.txt -e ".[pretrained,bench,dev]"
	touch $@

demo: setup
	$(VENV)/bin/polytok demo

test: setup
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q -n 2

bench: setup
	$(PY) benchmarks/quantizers.py
