# Two commands set up a fresh machine and run the tests: `make setup`, `make test`.
# `make demo` runs the main job on an embedded default.
SHELL := /bin/bash
PY := .venv/bin/python
PIP := .venv/bin/pip
CURATE := .venv/bin/curate
APT_PACKAGES := libusb-1.0-0 libosmesa6 libgl1
# Empty as root; sudo for anyone else.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export MUJOCO_GL := osmesa
export PYOPENGL_PLATFORM := osmesa
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup setup-apt setup-venv test demo bench clean

# Every step runs on every `make setup`, with no check of what is already there: a fresh machine
# and CI take the same path, so a broken step cannot hide behind a stamp file. Running the steps
# again is harmless (apt-get install, venv and pip install are idempotent).
setup: setup-apt setup-venv

# Debian packages: open3d needs libusb, MuJoCo's CPU renderer needs OSMesa. As root apt-get runs
# directly, otherwise through sudo; `env` sets the variable for apt-get in both cases.
setup-apt:
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(APT_PACKAGES)

setup-venv:
	python3.11 -m venv .venv
	$(PIP) install --upgrade pip
	$(PIP) install -r requirements.lock
	$(PIP) install --no-deps -e .

test:
	$(PY) -m pytest -q -n auto --dist loadfile --durations=30 -m "not serial" tests
	$(PY) -m pytest -q --durations=5 -m serial tests

demo:
	$(CURATE) demo

bench:
	$(CURATE) bench simulate
	$(CURATE) bench labels
	$(CURATE) bench labelers

clean:
	rm -rf .venv build *.egg-info .pytest_cache
