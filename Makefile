# StreamFlow churn platform. Every target bootstraps through `make venv`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9

.PHONY: venv demo test test-compose test-faults test-fast bench lint bento stack-up stack-down generate clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install -q --python $(BIN)/python -r requirements.txt
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	@touch $@

demo: venv
	$(BIN)/python -m streamflow_mlops demo

test: venv
	$(BIN)/python -m pytest -q tests

# Unit tests (no database, network or apt) and the DAG integrity checks: under a minute.
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow" tests/unit tests/dags/test_dag_integrity.py

# The container mode on a Docker engine (tests/compose): builds the images, runs the lifecycle
# through a compose stack and the containerized bento, then `down -v` (~20 min; logs of a failed
# run under .streamflow/compose-logs/); then a celery stack's first month and a spark stack's first
# month on the cluster, served and scored (27 min in all at load up to 12, the spark stack ~12 of
# them). Starts ../shared/container-engine when it is there.
test-compose: venv
	STREAMFLOW_COMPOSE_TESTS=1 $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/compose

# Faults survived (tests/faults): one compose stack (CeleryExecutor, two workers), a worker killed
# in month_000's training and promotion, then its parts killed mid-work one after another (Redis,
# the churn service and Postgres under /predict load, ...), each outcome asserted and its figures
# printed (13-15 min); logs of a failed run under .streamflow/compose-logs/faults/.
test-faults: venv
	STREAMFLOW_FAULT_TESTS=1 $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/faults

# The benchmarks, with the bench-only packages (skl2onnx, onnxruntime) of requirements-bench.txt.
bench: venv
	$(BIN)/uv pip install -q --python $(BIN)/python -r requirements.txt -r requirements-bench.txt
	$(BIN)/python -m bench

lint: venv
	$(BIN)/ruff check plugins dags bentos feature_repo tests bench
	$(BIN)/ruff format --check plugins dags bentos feature_repo tests bench

bento: venv
	$(BIN)/python -m streamflow_mlops bento

stack-up: venv
	$(BIN)/python -m streamflow_mlops stack up

stack-down: venv
	$(BIN)/python -m streamflow_mlops stack down

generate: venv
	$(BIN)/python -m streamflow_mlops generate

clean:
	rm -rf .streamflow data/drops
