# The README's commands. Each target creates or reuses .venv, installs a CPU torch when the venv has none
# (override TORCH_SPEC for your own build, e.g. `make test TORCH_SPEC="torch==2.5.1"`), installs samkit with
# its dev extra, then runs.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PRESET ?= quick
OUT ?= results
PY := $(VENV)/bin/python
STAMP := $(VENV)/.samkit-installed

.PHONY: test reproduce lint bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

reproduce: $(STAMP)
	$(PY) examples/sam_vs_usam.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

bench: $(STAMP)
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
