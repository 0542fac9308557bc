# Two entry points a new user needs: `make demo` and `make test`. Each creates or updates
# the local virtual environment first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint ci server worker gpu-worker deploy clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt scripts/setup_venv.sh
	PYTHON=$(PYTHON) bash scripts/setup_venv.sh $(VENV)
	touch $(STAMP)

# Lint and type-check: ruff on the whole tree, mypy on pipeline, model and flows
# (configured in pyproject.toml; about a minute on 2 cores).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# What CI runs (.ci/run): lint and type-check, then the test suite.
ci: lint test

test: venv
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out .pytest_cache

# --- the main job on the bundled sample -------------------------------------------------
DEMO_SCENE := samples/s2_l1c_berlin_20170216.tif
DEMO_OUT := out/demo

demo: venv
	PREFECT_HOME=$(CURDIR)/.prefect DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false \
	PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120 \
	$(BIN)/python -m flows.extract_scene water $(DEMO_SCENE) --out $(DEMO_OUT) \
	  --model spex --tile 256 --overlap 32 --format cog,prob,zarr,gpkg

# --- Prefect server, worker and deployments (all bound to 127.0.0.1) -----------------------
PREFECT_ENV := PREFECT_HOME=$(CURDIR)/.prefect DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false \
	PREFECT_API_URL=http://127.0.0.1:4200/api SPEX_PROJECT_DIR=$(CURDIR)

server: venv
	$(PREFECT_ENV) $(BIN)/prefect server start --host 127.0.0.1 --port 4200

deploy: venv
	$(PREFECT_ENV) $(BIN)/prefect work-pool create spex-cpu --type process --overwrite
	$(PREFECT_ENV) $(BIN)/prefect work-pool create spex-gpu --type process --overwrite
	$(PREFECT_ENV) $(BIN)/prefect --no-prompt deploy --all

worker: venv
	$(PREFECT_ENV) $(BIN)/prefect worker start --pool spex-cpu

gpu-worker: venv
	$(PREFECT_ENV) $(BIN)/prefect worker start --pool spex-gpu
