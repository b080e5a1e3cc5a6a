# The two commands of the README. Both set everything up on a fresh machine, from the lock.
#   make demo   the main job, end to end
#   make test   the whole test suite (what CI runs, through .ci/run); make test-slow: its costly variants
# The lock, and the checks of the ranges around it:
#   make lock          locks/<platform>-py<X.Y>.txt from pyproject.toml (keeps the pins that still fit)
#   make lock-upgrade  the same, every package at the newest version the ranges allow
#   make test-latest   the tests on the newest versions the ranges allow, without the lock (.venv-latest)
#   make test-oldest   the tests on the lowest versions the ranges allow (uv's lowest-direct, .venv-oldest)
#   make test-runtime-oldest  the runtime-only wheel ([cpu], no torch) at its own lowest versions, torch-free tests

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo-out
EXTRAS  = $(shell $(PYTHON) locks/lock.py extras)
# How the venv is installed: locked (the lock, exactly), latest (the newest the ranges allow), oldest (the lowest).
RESOLVE ?= locked

# uv does the installs (a fresh venv in ~10 s where pip takes ~55 s here) and writes the lock. It is pinned here
# and lives in its own small venv, so that `make lock` works when the project's venv cannot be made.
UV_VERSION := 0.13.9
TOOLS  := build/tools
UV     := $(TOOLS)/bin/uv
LOCK   := $(shell $(PYTHON) locks/lock.py path 2>/dev/null)
# uv does not read pip's configuration: it gets pip's find-links (where this workplace keeps torch's CPU wheel).
# Elsewhere the CPU build of torch comes from PyTorch's index: make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
FIND_LINKS := $(sort $(PIP_FIND_LINKS) $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
TORCH_INDEX ?=
SOURCES := $(foreach f,$(FIND_LINKS),--find-links $(f)) \
           $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX) --index-strategy unsafe-best-match)
INSTALL_HINT = echo "make: the install failed (above). If torch==2.13.0+cpu was not found, add PyTorch's CPU index: make $(or $(MAKECMDGOALS),$(.DEFAULT_GOAL)) TORCH_INDEX=https://download.pytorch.org/whl/cpu" >&2; exit 1

.PHONY: demo test test-slow clean browser dist lock lock-upgrade test-latest test-oldest test-runtime-oldest
.DEFAULT_GOAL := demo

# Before anything is installed, make stops with one line if this Python is too old, has no lock, or the lock is not
# pyproject.toml's (locks/lock.py check). Not for the targets that write the lock or do without it.
ifeq ($(RESOLVE),locked)
ifneq ($(filter-out lock lock-upgrade clean test-latest test-oldest,$(or $(MAKECMDGOALS),$(.DEFAULT_GOAL))),)
LOCK_PROBLEM := $(shell $(PYTHON) locks/lock.py check 2>&1)
$(if $(LOCK_PROBLEM),$(error $(LOCK_PROBLEM)))
endif
endif

$(UV):
	@mkdir -p build
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet uv==$(UV_VERSION)

# Without the lock: pyproject.toml's requirements given as such (`-r pyproject.toml`), so that they are the direct
# ones that uv's lowest-direct lowers (through `-e .` they would be the project's, and keep their newest).
comma := ,
RESOLUTION_latest := --upgrade
RESOLUTION_oldest := --resolution lowest-direct
# Without the lock, torch's build is still the lock's (PyPI's 2.13.0 is the CUDA build, which the lowest resolution
# would take over 2.13.0+cpu): the version is pyproject.toml's pin either way.
TORCH_BUILD := build/torch-build.txt
$(TORCH_BUILD): $(LOCK)
	@mkdir -p build
	grep '^torch==' $(LOCK) > $@

# The venv: made anew whenever pyproject.toml or the lock changes, so it holds exactly what is locked
# (torch's CPU build included: the lock pins torch==2.13.0+cpu; an unpinned torch pulls several GB of CUDA packages).
$(STAMP): pyproject.toml $(if $(filter locked,$(RESOLVE)),$(LOCK),$(TORCH_BUILD)) | $(UV)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
ifeq ($(RESOLVE),locked)
	$(UV) pip sync --quiet --python $(PY) $(SOURCES) --build-constraints $(LOCK) $(LOCK) || { $(INSTALL_HINT); }
	$(UV) pip install --quiet --python $(PY) --no-deps --build-constraints $(LOCK) -e . || { $(INSTALL_HINT); }
else ifneq ($(filter latest oldest,$(RESOLVE)),)
	$(UV) pip install --quiet --python $(PY) $(SOURCES) -c $(TORCH_BUILD) $(RESOLUTION_$(RESOLVE)) \
	  -r pyproject.toml $(foreach e,$(subst $(comma), ,$(EXTRAS)),--extra $(e)) || { $(INSTALL_HINT); }
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
else
	@echo "make: RESOLVE=$(RESOLVE): use locked, latest or oldest" >&2; exit 2
endif
	$(UV) pip freeze --python $(PY) > $(VENV)/installed.txt
	touch $(STAMP)

# pip inside the tests (the wheel's install into a fresh venv) and python -m build's isolated environment install
# from the lock too; under test-latest / test-oldest they take what the index has.
LOCKED_PIP := $(if $(filter locked,$(RESOLVE)),PIP_CONSTRAINT=$(abspath $(LOCK)))

test: $(STAMP) browser dist
	$(LOCKED_PIP) $(PY) -m pytest -q

# The costly variants `make test` leaves out (marker `slow`: ~2 min here), to keep CI under 20 minutes on 2 cores.
test-slow: $(STAMP) dist
	$(LOCKED_PIP) $(PY) -m pytest -q -m slow

# The distribution: the built-in engine dir svdedit:shapes (models/shapes exported in fp32; the export is a no-op
# when build/shapes-engine is up to date) copied into the package, then the sdist and the wheel built from it
# (python -m build: the wheel from the sdist, in a clean environment without torch). tests/test_distribution.py
# installs the wheel into a fresh virtual environment and runs it as a user would.
ENGINE_BUILD := build/shapes-engine
PACKAGED := runtime/svdedit/runtime/packaged/shapes
dist: $(STAMP)
	$(VENV)/bin/svdedit export models/shapes -o $(ENGINE_BUILD) 2>/dev/null
	find $(PACKAGED) -maxdepth 1 -type f ! -name README.md -delete
	cp $(ENGINE_BUILD)/*.json $(ENGINE_BUILD)/*.onnx $(PACKAGED)/
	rm -rf dist
	@mkdir -p build
	$(LOCKED_PIP) $(PY) -m build --outdir dist . > build/dist.log 2>&1 || { cat build/dist.log; exit 1; }
	@ls -l dist

# The web page's test drives Debian's chromium through chromium-driver. Installed here where the machine
# allows it (root, apt-get); elsewhere that one test skips and says why.
browser:
	@command -v chromedriver >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "make: chromium not installed; the browser test will be skipped"

# The demo, on the embedded model (models/shapes): export it, check the engine dir, generate an image,
# reconstruct a rendered one, learn red -> blue from one prompt pair, edit 16 held-out images (grid + metrics).
PROMPT ?= a large red circle on the left
demo: $(STAMP)
	$(VENV)/bin/svdedit export models/shapes -o $(DEMO)/engine
	$(VENV)/bin/svdedit check $(DEMO)/engine
	$(VENV)/bin/svdedit generate --engine $(DEMO)/engine --prompt "$(PROMPT)" --seed 0 --steps 50 --guidance 3 -o $(DEMO)/generated.png
	$(PY) -m models.shapes_data "a small blue square in the middle" $(DEMO)/input.png --seed 1
	$(VENV)/bin/svdedit reconstruct --engine $(DEMO)/engine --image $(DEMO)/input.png --prompt "a small blue square in the middle" --steps 50 -o $(DEMO)/reconstructed.png
	$(VENV)/bin/svdedit learn --engine $(DEMO)/engine --source "a large red circle in the middle" --target "a large blue circle in the middle" -o $(DEMO)/red2blue.safetensors
	$(VENV)/bin/svdedit edit --engine $(DEMO)/engine --attr $(DEMO)/red2blue.safetensors --prompt "a small red square on the left" --seeds 0-3 -o $(DEMO)/edits
	$(PY) -m models.demo_edit --engine $(DEMO)/engine --attr $(DEMO)/red2blue.safetensors --attribute colour --to blue -o $(DEMO)/edit
	@echo "demo: images in $(DEMO)/, the edit grid in $(DEMO)/edit/grid.png, its metrics in $(DEMO)/edit/metrics.json"

# The lock. `make lock` after an edit of pyproject.toml's dependencies; `make lock-upgrade` to move to the newest.
lock: | $(UV)
	$(PYTHON) locks/lock.py compile $(UV) $(SOURCES)
lock-upgrade: | $(UV)
	$(PYTHON) locks/lock.py compile $(UV) --upgrade $(SOURCES)

# The ranges around the lock, each in its own venv (the wheel and the demo engine are rebuilt in it).
test-latest:
	rm -rf .venv-latest
	$(MAKE) test VENV=.venv-latest RESOLVE=latest
test-oldest:
	rm -rf .venv-oldest
	$(MAKE) test VENV=.venv-oldest RESOLVE=oldest

# The runtime-only wheel at the lowest versions its own ranges allow (the export extra's transformers would force
# newer tokenizers and safetensors and hide the runtime's floors), with the test tools at their locked versions:
# `svdedit demo` (learn and edit on the built-in engine), then the tests (those that need torch or the service skip).
RUNTIME_VENV := .venv-runtime-oldest
TEST_TOOLS := pytest hypothesis
test-runtime-oldest: dist
	rm -rf $(RUNTIME_VENV)
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(UV) pip install --quiet --python $(RUNTIME_VENV)/bin/python --resolution lowest-direct -r pyproject.toml --extra cpu
	$(UV) pip install --quiet --python $(RUNTIME_VENV)/bin/python --no-deps "$$(ls dist/svdedit-*.whl)"
	$(UV) pip install --quiet --python $(RUNTIME_VENV)/bin/python -c $(LOCK) $(TEST_TOOLS)
	$(UV) pip freeze --python $(RUNTIME_VENV)/bin/python > $(RUNTIME_VENV)/installed.txt
	$(RUNTIME_VENV)/bin/svdedit demo -o build/runtime-oldest-demo
	$(RUNTIME_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not gpu and not tensorrt"

clean:
	rm -rf $(DEMO) build dist *.egg-info .pytest_cache .venv-latest .venv-oldest $(RUNTIME_VENV)
	find $(PACKAGED) -maxdepth 1 -type f ! -name README.md -delete
