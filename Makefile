# Two commands on a fresh Debian 12 with Python 3.11 (pip + venv): `make demo` and `make test`.
# Each creates .venv if missing and installs the project with what it needs, then runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test test-unit test-service bench install clean wheels compose-tier swarm-tier up down load lint

LINT_STAMP := $(VENV)/.lint-stamp

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

$(LINT_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,lint]'
	@touch $(LINT_STAMP)

# ruff, then mypy over the installed package names (the source folders linked under build/typecheck/gvtsim)
lint: $(LINT_STAMP)
	@mkdir -p build/typecheck/gvtsim
	@for d in protocol hardware services orchestration; do ln -sfn ../../../$$d build/typecheck/gvtsim/$$d; done
	@echo "== ruff"; $(BIN)/ruff check .; r=$$?; echo "== mypy"; $(BIN)/mypy; m=$$?; exit $$((r | m))

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

wheels: $(STAMP)  # the project and its dependencies as wheels, for the offline image build (Dockerfile)
	rm -rf wheels && $(BIN)/python -m pip wheel --quiet --disable-pip-version-check . -w wheels/

compose-tier: $(STAMP)  # the real docker-compose.yml on a real Docker engine (root; installs what it needs)
	bash .ci/compose-tier

swarm-tier: $(STAMP)  # host stacks on a swarm of 2 daemons in network namespaces (root; after compose-tier)
	bash .ci/swarm-tier

up: $(STAMP)
	$(BIN)/gvtsim up

down: $(STAMP)
	$(BIN)/gvtsim down

load: $(STAMP)  # the acceptance load: 64 VMs for 30 s, report in reports/load
	$(BIN)/gvtsim load --vms 64 --duration 30 --report reports/load

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
