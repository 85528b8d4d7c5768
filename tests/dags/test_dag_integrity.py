"""DAG integrity: parses with no infrastructure, follows the house rules, stays light at parse time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
EXPECTED = {
    "streamflow_ingest": {"month"},
    "streamflow_features": {"month"},
    "streamflow_train": {"month", "seed", "delta"},
    "streamflow_drift": {"month", "drift_threshold", "decay_threshold"},
    "streamflow_rollback": {"version", "reason"},
}
HEAVY = ("pandas", "sklearn", "mlflow", "feast", "evidently", "great_expectations", "bentoml", "numpy")


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    import os

    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS), include_examples=False)


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_expected_dags_and_params(dagbag):
    assert set(dagbag.dag_ids) == set(EXPECTED)
    for dag_id, params in EXPECTED.items():
        assert set(dagbag.dags[dag_id].params.keys()) == params, dag_id


def test_file_name_is_dag_id():
    assert {p.stem for p in DAGS.glob("*.py")} == set(EXPECTED)


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_house_rules(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert dag.catchup is False
    assert dag.tags, "tags"
    assert dag.doc_md and len(dag.doc_md) > 200, "doc_md"
    assert dag.timetable is not None and "schedule" not in (dag.description or "")
    assert dag.default_args.get("retries", 0) >= 1, "default retries"
    for t in dag.tasks:
        assert t.owner and t.owner != "airflow", f"{t.task_id} owner"
    for name, param in dag.params.items():
        assert param.value is not None, f"{name} has no default"
        assert param.schema.get("type"), f"{name} has no UI form schema"


def test_parsing_imports_nothing_heavy_and_opens_no_connection():
    """In a fresh interpreter: parse every DAG file, then list heavy modules and sockets opened."""
    code = f"""
import json, socket, sys, os
opened = []
real_connect = socket.socket.connect
def spy(self, address):
    opened.append(str(address))
    return real_connect(self, address)
socket.socket.connect = spy
import airflow.sdk
before = set(sys.modules)
import importlib.util
for path in sorted(os.listdir({str(DAGS)!r})):
    if path.endswith('.py'):
        spec = importlib.util.spec_from_file_location(path[:-3], os.path.join({str(DAGS)!r}, path))
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
new = set(sys.modules) - before
heavy = sorted(m for m in new if m.split('.')[0] in {HEAVY!r})
print(json.dumps({{"heavy": heavy, "opened": opened}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["opened"] == []
