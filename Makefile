# Two commands do all set-up on a fresh machine:
#   make train   creates .venv if missing, installs, trains LeNet on the bundled MNIST
#   make test    same set-up, runs the default test suite (slow tests excluded)
# Extra arguments: make train ARGS="model=simple_cnn trainer.max_epochs=5"
#                  make test PYTEST_ARGS="-k mnist -x"

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install install-dev train eval test test-full lint format bench tensorboard clean

# make train installs the package alone (what the default run needs); make test adds the extras
# the tests exercise (sweeps, export, trackers, timm, streaming)
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	@touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,sweep,export,flowers,stream,track,timm]"
	@touch $(DEV_STAMP)

install: $(STAMP)

install-dev: $(DEV_STAMP)

train: install
	$(PY) src/train.py $(ARGS)

eval: install
	$(PY) src/eval.py $(ARGS)

# pytest exits 5 when no test was collected (e.g. a -k that matches nothing): not a failure of the code
test: install-dev
	@$(PY) -m pytest -m "not slow" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

test-full: install-dev
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

lint: install-dev
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts
	$(VENV)/bin/mypy

format: install-dev
	$(VENV)/bin/ruff format src tests scripts
	$(VENV)/bin/ruff check --fix src tests scripts

bench: install-dev
	$(PY) scripts/benchmark.py $(ARGS)

tensorboard: install
	$(VENV)/bin/tensorboard --logdir logs

clean:
	rm -rf logs/*/ .pytest_cache .ruff_cache .mypy_cache
