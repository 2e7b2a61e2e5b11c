# Two commands set up a fresh machine and run the tests: `make setup`, `make test`.
# `make demo` runs the main job on an embedded default.
SHELL := /bin/bash
PY := .venv/bin/python
PIP := .venv/bin/pip
CURATE := .venv/bin/curate
APT_PACKAGES := libusb-1.0-0 libosmesa6 libgl1
export MUJOCO_GL := osmesa
export PYOPENGL_PLATFORM := osmesa
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup test demo bench clean

setup: .venv/.installed

# Debian packages (open3d needs libusb, MuJoCo's CPU renderer needs OSMesa), then the venv.
.venv/.apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && $$SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi
	@test -d .venv || python3.11 -m venv .venv || python3 -m venv .venv
	@touch $@

.venv/.installed: .venv/.apt requirements.lock pyproject.toml
	$(PIP) install --upgrade pip
	$(PIP) install -r requirements.lock
	$(PIP) install --no-deps -e .
	@touch $@

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(CURATE) demo

bench: setup
	$(CURATE) bench simulate
	$(CURATE) bench labels
	$(CURATE) bench labelers

clean:
	rm -rf .venv build *.egg-info .pytest_cache
