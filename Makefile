# `make demo` and `make test` each build their own virtual environment (.venv) from the pinned
# constraints, so they work on a fresh clone with nothing but python3 (>= 3.11) and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench bench-finetune clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/orwcfm demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/pretrain_digits.py

bench-finetune: $(STAMP)
	$(BIN)/python benchmarks/finetune_speed.py

clean:
	rm -rf $(VENV) .pytest_cache
