# Two commands do all set-up on a fresh machine:
#   make train   creates .venv if missing, installs, trains LeNet on the bundled MNIST
#   make test    same set-up, runs the default test suite (slow tests excluded)
# Extra arguments: make train ARGS="model=simple_cnn trainer.max_epochs=5"
#                  make test PYTEST_ARGS="-k mnist -x"

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install train eval test test-full lint format bench tensorboard clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,sweep,export,flowers,stream]"
	@touch $(STAMP)

install: $(STAMP)

train: install
	$(PY) src/train.py $(ARGS)

eval: install
	$(PY) src/eval.py $(ARGS)

# pytest exits 5 when no test was collected (e.g. a -k that matches nothing): not a failure of the code
test: install
	@$(PY) -m pytest -m "not slow" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

test-full: install
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

lint: install
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format src tests scripts
	$(VENV)/bin/ruff check --fix src tests scripts

bench: install
	$(PY) scripts/benchmark.py $(ARGS)

tensorboard: install
	$(VENV)/bin/tensorboard --logdir logs

clean:
	rm -rf logs/*/ .pytest_cache .ruff_cache .mypy_cache
