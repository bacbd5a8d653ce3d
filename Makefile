# The README's two commands: `make run` and `make test`. Both set everything up first.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: install run test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel; anything else pulls gigabytes of CUDA packages
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,llamacpp]"
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/rag-loop serve --host $${HOST:-127.0.0.1} --port $${PORT:-8000}

lint: install
	$(BIN)/ruff check rag_loop tests evals
	$(BIN)/ruff format --check rag_loop tests evals
	$(BIN)/mypy

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python evals/bench_serving.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
