# Two commands: `make demo` (the main job) and `make test` (the test suite).
# `make demo-train` retrains the demo model that `make demo` renders (checkpoints/demo/).
# `make app` serves the web app on http://127.0.0.1:7860 (APP_ARGS="--host 0.0.0.0" exposes it).
# Each creates/updates the local virtual environment in .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export DS_BUILD_OPS := 0
export DS_ACCELERATOR := cpu
export OMP_NUM_THREADS ?= 2
# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads
# made the VAE 15x slower (0.30 s -> 4.5 s per 13x64x64 encode) when another process ran.
export OMP_WAIT_POLICY ?= PASSIVE
export PYTHONUNBUFFERED := 1

.PHONY: setup demo demo-train app test test-fast benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	# torch first: the pinned build (served from local disk where available); deepspeed's
	# sdist imports torch in its setup.py, so it must already be present.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --no-build-isolation deepspeed
	$(PY) -m pip install -q -e '.[test]'
	# the headless Chromium of the app's browser tests (apt-get; nothing when installed)
	bash tools/setup_browser.sh
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py render

demo-train: $(STAMP)
	$(PY) tools/demo.py train

app: $(STAMP)
	$(VENV)/bin/factorportrait-app $(APP_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

benchmark: $(STAMP)
	$(PY) tools/benchmark.py all

clean:
	rm -rf $(VENV) build *.egg-info
