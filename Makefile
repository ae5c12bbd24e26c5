# `make demo` and `make test` set up .venv/ themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch lies on this machine's disk; a bare `torch` may pull a multi-GB CUDA build.
TORCH_DEV := torch==2.13.0
STAMP := $(VENV)/.installed
# The preview page's tests open it in a real browser: Debian's Chromium.
CHROMIUM := /usr/bin/chromium
# The metadata tests read inputs and outputs with the reference reader: Debian's exiftool.
EXIFTOOL := /usr/bin/exiftool

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_DEV)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

$(EXIFTOOL):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libimage-exiftool-perl

demo: $(STAMP)
	$(PY) -m carray.demo --output demo-output

test: $(STAMP) $(CHROMIUM) $(EXIFTOOL)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/prep.py
	$(PY) bench/train.py
	$(PY) bench/infer.py
	$(PY) bench/models.py

clean:
	rm -rf demo-output .pytest_cache
