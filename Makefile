# All set-up lives here: every target depends on .venv, so a fresh clone needs nothing else.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PROFILE ?= quick
NB ?=
export MULREG_DATA ?= $(if $(wildcard ../shared/data/cifar10),$(abspath ../shared/data/cifar10),)

.PHONY: setup test figures bench lab clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name mulreg --display-name "Python (mulreg)"
	touch $@

test: setup
	$(PY) -m ruff check lib tests
	$(PY) -m pytest

figures: setup
	$(PY) -m mulreg figures --profile $(PROFILE) $(if $(NB),--nb $(NB),)

bench: setup
	$(PY) -m mulreg.bench

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf reports results .cache
