# Two commands on a fresh Debian 12 with Python 3.11 (pip + venv): `make demo` and `make test`.
# Each creates .venv if missing and installs the project with what it needs, then runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test test-unit test-service bench install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/gvtsim demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-service: $(STAMP)
	$(BIN)/python -m pytest tests/service $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/gvtsim bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
