# The README's commands. Each target creates or reuses .venv, installs a CPU torch when the venv has none
# (override TORCH_SPEC for your own build, e.g. `make test TORCH_SPEC="torch==2.5.1"`), installs samkit with
# its dev, ray, docs, lightning and hf extras (so the tests of the Ray executor, the docs site and the
# integrations run), then runs.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PRESET ?= quick
OUT ?= results
PY := $(VENV)/bin/python
STAMP := $(VENV)/.samkit-installed

.PHONY: test reproduce lint bench install data clean docs

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,ray,docs,lightning,hf]"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

reproduce: $(STAMP) data
	$(VENV)/bin/samkit reproduce --preset $(PRESET) --out $(OUT)

# Fashion-MNIST (MIT) from Debian's dataset-fashion-mnist package, for the deep-network experiment and `samkit train`.
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
data:
	@if [ -f "$(FMNIST_DIR)/train-images-idx3-ubyte.gz" ]; then echo "Fashion-MNIST found in $(FMNIST_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "warning: could not install dataset-fashion-mnist"; \
	else echo "warning: Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist' or set SAMKIT_DATA_DIR"; fi

# ruff (lint and format) on all the code, then mypy on src/samkit (its settings: [tool.mypy] in pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy

# the docs site (mkdocs.yml): strict, so a broken reference or an untested example fails; open site/index.html
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# PyHessian is the peer benchmarks/sharpness.py measures against (installed without its dependencies: it would
# replace torch)
bench: $(STAMP)
	$(PY) -m pip install --quiet --no-deps pyhessian
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache site
