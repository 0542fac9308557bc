# Two entry points a new user needs: `make demo` and `make test`. Each creates or updates
# the local virtual environment first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench server worker deploy clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt scripts/setup_venv.sh
	PYTHON=$(PYTHON) bash scripts/setup_venv.sh $(VENV)
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check pipeline model flows tests bench

test: venv
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out .pytest_cache
