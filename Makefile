# The two commands of the README. Both set everything up on a fresh machine.
#   make demo   the main job, end to end
#   make test   the whole test suite (what CI runs, through .ci/run)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo-out

.PHONY: demo test clean browser dist

# A virtual environment with the export stage, the CPU onnxruntime, the service (uvicorn and Ray Serve) and
# the test tools.
# torch is pinned in pyproject.toml (an unpinned torch pulls several GB of CUDA packages).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[export,cpu,dev,ray]"
	touch $(STAMP)

test: $(STAMP) browser dist
	$(PY) -m pytest -q

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
	$(PY) -m build --outdir dist . > build/dist.log 2>&1 || { cat build/dist.log; exit 1; }
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

clean:
	rm -rf $(DEMO) build dist *.egg-info .pytest_cache
	find $(PACKAGED) -maxdepth 1 -type f ! -name README.md -delete
