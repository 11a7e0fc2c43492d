# Two commands on a fresh machine: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONUNBUFFERED := 1
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: install test demo bench clean

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: here it is a local CPU build; an open range would pull CUDA packages
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,train,eval]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m ruff check src tests eval conversion scripts
	$(PY) -m pytest -q tests

demo: install
	$(PY) -m blt_hf.tools.demo_byteified
	$(PY) -m blt_hf.tools.demo

bench: install
	$(PY) eval/run_benchmarks.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
