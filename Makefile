# The README's two commands: `make demo` and `make test`. Both do the (idempotent) set-up first.
PY := .venv/bin/python
export DETECTRON2_DATASETS ?= datasets

.PHONY: setup data demo test test-fast clean-demo
setup:
	bash scripts/install.sh

data: setup
	$(PY) -m mocoeval.data.make_mini_data --root datasets

demo: setup data

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"
