# The two README commands. Both create .venv on a fresh machine; nothing is downloaded at run time.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint clean

# The slowest drills (marker "drill", > 10 min each) run in CI (CI=true) and are skipped by a local `make test`;
# `make test CI=true` or `pytest -m drill` runs them here.
DRILLS := $(if $(filter true,$(CI)),,-m "not drill")

# torch first, pinned to the local CPU build, so that no requirement pulls the CUDA wheels.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev,serve,scale]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m pipeline.demo

test: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest $(DRILLS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) demo-output
