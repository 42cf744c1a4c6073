# Two commands do all the set-up: `make demo` (the main job) and `make test` (the suite).
# torch is installed first from the CPU wheel on disk, so nothing pulls a CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e ".[all,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/canvas-engineering fit

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/compile.py --write-readme
	$(PY) benchmarks/attention.py --write-readme
	$(PY) benchmarks/looped.py --write-readme
	$(PY) benchmarks/train.py --write-readme
