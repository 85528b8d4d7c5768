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
    "streamflow_ingest": {"month", "force"},
    "streamflow_features": {"month", "force"},
    "streamflow_train": {"month", "seed", "delta", "force", "approval", "approval_timeout"},
    "streamflow_drift": {"month", "drift_threshold", "decay_threshold"},
    "streamflow_rollback": {"version", "reason"},
    "streamflow_score": {"month", "top_k", "rank_by", "control_share"},
}
HEAVY = ("pandas", "sklearn", "mlflow", "feast", "evidently", "great_expectations", "bentoml", "numpy")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


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
        # Transient failures retry; deterministic ones raise AirflowFailException instead of retries=0.
        assert t.retries >= 1, f"{t.task_id} retries"
    for name, param in dag.params.items():
        assert param.value is not None, f"{name} has no default"
        assert param.schema.get("type"), f"{name} has no UI form schema"


def test_the_asset_chain_runs_the_whole_lifecycle(dagbag):
    """ingest -> features -> drift -> train by assets alone; train and rollback both emit the champion."""
    outlets = {d: {a.name for t in dag.tasks for a in t.outlets} for d, dag in dagbag.dags.items()}
    scheduled_on = {
        d: {a.name for a in dag.schedule} for d, dag in dagbag.dags.items() if isinstance(dag.schedule, list)
    }
    chain, dag_id = ["streamflow_ingest"], "streamflow_ingest"
    while next_dags := sorted(d for d, assets in scheduled_on.items() if assets & outlets[dag_id]):
        (dag_id,) = next_dags
        chain.append(dag_id)
    assert chain == ["streamflow_ingest", "streamflow_features", "streamflow_drift", "streamflow_train"]
    assert outlets["streamflow_train"] == outlets["streamflow_rollback"] == {"streamflow_champion"}
    assert outlets["streamflow_drift"] == {"streamflow_retrain_request"}


def test_assets_and_defaults_are_declared_once():
    """The DAG files take Assets, the month Param and the @dag defaults from dag_defaults."""
    for path in DAGS.glob("*.py"):
        text = path.read_text()
        assert "Asset(" not in text and "start_date" not in text and "TriggerDagRunOperator" not in text, path.name
        assert "from streamflow_mlops.pipelines.dag_defaults import" in text, path.name


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
