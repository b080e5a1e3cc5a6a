# The two commands of the README. Both set everything up on a fresh machine.
#   make demo   the main job, end to end
#   make test   the whole test suite (what CI runs, through .ci/run)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo-out

.PHONY: demo test clean

# A virtual environment with the export stage, the CPU onnxruntime and the test tools.
# torch is pinned in pyproject.toml (an unpinned torch pulls several GB of CUDA packages).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[export,cpu,dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# For now the demo builds a tiny seeded SD 1.x pipeline, exports it, and checks the engine dir.
demo: $(STAMP)
	rm -rf $(DEMO)/pipeline
	$(PY) -m tests.fixtures.tiny_sd sd1 $(DEMO)/pipeline
	$(VENV)/bin/svdedit export $(DEMO)/pipeline -o $(DEMO)/engine
	$(VENV)/bin/svdedit check $(DEMO)/engine

clean:
	rm -rf $(DEMO) build *.egg-info .pytest_cache
