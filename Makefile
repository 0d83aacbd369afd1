# nlseg — the two quick-start commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.nlseg-installed

.PHONY: install test test-all demo bench clean

# Create the virtual environment and install nlseg into it. torch is pinned to the CPU build
# that lies on disk (2.13.0) when no torch is present, so an unpinned CUDA download never happens.
# cityscapesscripts is the official Cityscapes evaluator, for the test that compares its mIoU with
# nlseg's; --no-deps because its pixel-level path needs only numpy, pillow and pyquaternion.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test,onnx]"
	$(BIN)/pip install --quiet --no-deps "cityscapesscripts==2.3.0" "pyquaternion>=0.9.9"
	touch $(STAMP)

install: $(STAMP)

# test: every module and every user command at least once, in minutes; test-all: everything (long journeys,
# kill tests, every recipe, every model and family).
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/nlseg demo

# bench: regenerate every measured figure of README.md and docs/efficiency.md (the blocks between
# <!-- bench:NAME --> markers; benchmarks/figures.py lists them), about 77 min on 2 idle cores.
# BENCH_ARGS="--only ops" for some; MMSEG_PYTHON: mmseg's venv (bash benchmarks/mmseg_env.sh) for vs-mmseg.
MMSEG_PYTHON ?= .venv-mmseg/bin/python
bench: $(STAMP)
	$(BIN)/python benchmarks/regenerate.py --mmseg-python $(MMSEG_PYTHON) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
