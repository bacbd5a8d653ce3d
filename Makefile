# The README's two commands: `make run` and `make test`. Both set everything up first.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: install browser run test lint bench clean
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# llama.cpp (the llamacpp extra) is built once per machine into its own wheel folder, for
# any x86-64 with AVX2 (GGML_NATIVE=OFF). A -march=native build used AMX tile instructions
# that these VMs advertise but fault on ("Illegal instruction" in libggml-cpu). pip's own
# wheel cache ignores CMAKE_ARGS, so it could hand back a native build: hence the folder.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_WHEELS ?= $(HOME)/.cache/rag-loop/wheels/llama-cpp-portable

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel; anything else pulls gigabytes of CUDA packages
	$(BIN)/pip install -q torch==2.13.0
	ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || CMAKE_ARGS="-DGGML_NATIVE=OFF" \
	  $(BIN)/pip wheel -q --no-cache-dir --no-deps -w $(LLAMA_WHEELS) "llama-cpp-python==$(LLAMA_CPP_VERSION)"
	$(BIN)/pip install -q $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	$(BIN)/pip install -q -e ".[dev,llamacpp]"
	touch $@

install: $(BIN)/.installed

# the report's browser test drives Debian's headless Chromium through its chromedriver
/usr/bin/chromedriver:
	$(SUDO) apt-get install -y -q chromium chromium-driver \
	  || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium chromium-driver)

# `docker compose config` validates docker-compose.yml in the tests; no Docker engine is needed
/usr/bin/docker-compose:
	@if docker compose version >/dev/null 2>&1; then echo "docker compose (v2) is installed"; \
	else $(SUDO) apt-get install -y -q docker-compose \
	  || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q docker-compose); fi

browser: /usr/bin/chromedriver /usr/bin/docker-compose

run: install
	$(BIN)/rag-loop serve --host $${HOST:-127.0.0.1} --port $${PORT:-8000}

lint: install
	$(BIN)/ruff check rag_loop tests evals
	$(BIN)/ruff format --check rag_loop tests evals
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint browser
	$(BIN)/pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python evals/bench_serving.py
	$(BIN)/python evals/bench_evaluation.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
