# Image Factory: `make demo` builds an image on the local cloud, `make test` runs the tests.
# Both install what they need first (scripts/setup.sh).
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint local-cloud-up local-cloud-down

setup:
	@bash scripts/setup.sh

demo: setup
	$(BIN)/python scripts/demo.py

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest

local-cloud-up: setup
	$(BIN)/python -m localcloud up

local-cloud-down:
	$(BIN)/python -m localcloud down
