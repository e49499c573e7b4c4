# Two entry points for a fresh machine that has only Python (see README):
#   make demo   set up, then compare every registered connection on Shakespeare (quick preset)
#   make test   set up, then run the whole test suite (the timm tests in a second virtualenv, see test-timm)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch 2.13.0 is what we pin for set-up; package metadata keeps a range.
TORCH_PIN := torch==2.13.0
DEMO_STEPS ?= 90

# timm imports torchvision, which does not import beside torch 2.13.0; the pair below installs (a CUDA build,
# ~5.5 GB, about 1.5 min from the package index here), so the timm adapter tests get their own virtualenv.
TIMM_VENV := .venv-timm
TIMM_PINS := torch==2.14.1 torchvision==0.29.1 timm

.PHONY: setup demo test test-main test-timm clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# the library itself (what the demo needs), then the test dependencies and oracles on top
# --no-compile: pip would byte-compile every file of torch (most never imported); Python compiles what it imports
$(VENV)/.base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --no-compile --disable-pip-version-check "$(TORCH_PIN)"
	$(BIN)/pip install --quiet --no-compile --disable-pip-version-check -e ".[yaml]"
	touch $@

$(VENV)/.installed: $(VENV)/.base
	$(BIN)/pip install --quiet -e ".[test,yaml,hf]"
	touch $@

$(TIMM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TIMM_VENV)
	$(TIMM_VENV)/bin/pip install --quiet --upgrade pip
	$(TIMM_VENV)/bin/pip install --quiet $(TIMM_PINS)
	$(TIMM_VENV)/bin/pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# every registered scheme on the quick preset's model, two runs at a time (one thread each, one per core)
demo: $(VENV)/.base
	$(BIN)/reslab compare --task shakespeare --model gpt --connections all --preset quick --seeds 1 --jobs 2 \
		threads=1 steps=$(DEMO_STEPS) eval_every=30 --out-dir runs/demo

# two pytest workers (pytest-xdist), one thread each: both cores busy; the slowest tests listed at the end
test: test-main test-timm

test-main: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --durations=15

# reslab.patch against timm's real ResNet and ViT block classes (never a stub of torchvision)
test-timm: $(TIMM_VENV)/.installed
	OMP_NUM_THREADS=1 $(TIMM_VENV)/bin/python -m pytest -p no:cacheprovider tests/test_patch_timm.py

clean:
	rm -rf $(VENV) $(TIMM_VENV) runs .pytest_cache
