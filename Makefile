# One command each: `make demo` sets up and runs the offline merge demo; `make test` sets up and
# runs the tests. Both create .venv with the CPU build of torch first (an unpinned torch would
# pull a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-all bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/python recipes/offline/make_zoo.py
	$(BIN)/prefkit run recipes/offline/ties_pref.yaml recipes/offline/task_arithmetic_pref.yaml recipes/offline/averaging_pref.yaml --force

test: setup
	$(BIN)/ruff check prefkit plugins tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow"

test-all: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/merge_bench.py

clean:
	rm -rf $(VENV) runs recipes/offline/zoo
