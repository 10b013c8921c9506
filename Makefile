# All set-up lives here: every target depends on .venv, so a fresh clone needs nothing else.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PROFILE ?= quick
NB ?=
export MULREG_DATA ?= $(if $(wildcard ../shared/data/cifar10),$(abspath ../shared/data/cifar10),)

.PHONY: setup lock test figures bench lab clean gpu-wheels replication replication3

setup: $(VENV)/.installed

# Exactly the locked set (requirements.lock: every package pinned and hashed, the dev extras included),
# then mulreg itself, without resolving anything.
$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name mulreg --display-name "Python (mulreg)"
	touch $@

# requirements.lock from pyproject.toml's ranges (and its dev extras), for Linux x86-64 and $(PYTHON),
# with uv's pip-tools-compatible compiler (`uv pip compile`: hashes from the index, no downloads).
# Existing pins are kept; `make lock LOCK_ARGS=--upgrade` moves all, `LOCK_ARGS='-P torch'` one.
LOCK_TOOLS := .cache/lock-tools
LOCK_ARGS ?=
lock:
	$(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/python -m pip install --quiet uv==0.13.9
	$(LOCK_TOOLS)/bin/uv pip compile pyproject.toml --extra dev --generate-hashes --quiet \
		--python $(PYTHON) --python-platform x86_64-manylinux_2_28 \
		--custom-compile-command 'make lock' $(LOCK_ARGS) --output-file requirements.lock

test: setup
	$(PY) -m ruff check lib tests gpu_check
	$(PY) -m pytest -n auto --dist loadfile

figures: setup
	$(PY) -m mulreg figures --profile $(PROFILE) $(if $(NB),--nb $(NB),)

# The second replication's two sweeps (docs/PREREGISTRATION-2.md), each stage written into record/ as it
# completes (commit record/ after each): a machine lost mid-sweep loses at most the stage in progress.
replication: setup
	$(PY) -m mulreg sweep params/$(PROFILE)/replication_sweep.yaml --record
	$(PY) -m mulreg sweep params/$(PROFILE)/init_scale_sweep.yaml --record

# The third replication's two sweeps (docs/PREREGISTRATION-3.md), in its registered order: the arms trained
# past their stop to the horizon first, then the runs that stop; each stage written into record/ as above.
replication3: setup
	$(PY) -m mulreg sweep params/$(PROFILE)/replication3_horizon_sweep.yaml --record
	$(PY) -m mulreg sweep params/$(PROFILE)/replication3_sweep.yaml --record

bench: setup
	$(PY) -m mulreg.tools.bench

# The wheels the GPU machine's image lacks for mulreg's imports (it has torch, numpy, pandas, PyYAML,
# tqdm, ...; not pydantic and what pydantic needs), at this venv's versions, for its CPython 3.12 on
# x86-64 Linux; gpu_check/gpu_check.sh installs them there (docs/PERFORMANCE.md, "Offline GPU check").
WHEELS ?= .whl
GPU_WHEELS := pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection|typing[-_]extensions
gpu-wheels: setup
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d $(WHEELS) $$($(PY) -m pip freeze | grep -iE '^($(GPU_WHEELS))==')
	@du -ch $(WHEELS)/*.whl | tail -1

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf reports results .cache
