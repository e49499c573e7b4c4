# Two entry points for a fresh machine that has only Python (see README):
#   make demo   set up, then compare every registered connection on Shakespeare (quick preset)
#   make test   set up, then run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch 2.13.0 is what we pin for set-up; package metadata keeps a range.
TORCH_PIN := torch==2.13.0

.PHONY: setup demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[test,yaml]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/reslab compare --task shakespeare --model gpt --connections all --preset quick --seeds 1 --out-dir runs/demo

# one line per test file with its progress; the slowest tests listed at the end
test: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest --durations=10

clean:
	rm -rf $(VENV) runs .pytest_cache
