"""streamflow_ingest's own tasks, run in order as Airflow wires them: the postgres provider's hook
from the `AIRFLOW_CONN_STREAMFLOW_WAREHOUSE` connection, XCom-shaped hand-over, the outlet event.

`dag.test()` / `airflow dags test` are not used: on Airflow 3.2.2 here the in-process execution
API answers every task start with `'State' object has no attribute 'svcs_registry'` (its
lifespan is started without being awaited), so no task ever runs that way.
"""

from __future__ import annotations

import json

import psycopg
import pytest

from streamflow_mlops.synthetic.generate import DropSpec, write_drop


@pytest.fixture
def ingest_dag(stack_env, monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.setenv("AIRFLOW_CONN_STREAMFLOW_WAREHOUSE", stack_env.db_url)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(stack_env.repo_root / "dags" / "streamflow_ingest.py"), include_examples=False)
    return bag.dags["streamflow_ingest"]


def run_ingest(dag, month: str):
    from airflow.sdk import Asset
    from airflow.sdk.execution_time.context import OutletEventAccessors

    events = OutletEventAccessors()
    validated = dag.task_dict["validate"].python_callable(params={"month": month})
    summary = dag.task_dict["load"].python_callable(json.loads(json.dumps(validated)), outlet_events=events)
    return summary, events[Asset("streamflow_snapshots")].extra


def test_ingest_dag_loads_a_month_and_emits_the_snapshots_asset(ingest_dag, stack_env):
    write_drop(DropSpec(0, users=120), stack_env.drops_dir)
    assert [a.name for a in ingest_dag.task_dict["load"].outlets] == ["streamflow_snapshots"]
    assert ingest_dag.task_dict["validate"].retries == 0

    summary, extra = run_ingest(ingest_dag, "month_000")

    assert extra == {"month": "month_000", "as_of": "2024-01-31"}
    assert summary["row_counts"]["usage_agg_30d_snapshots"] == 120
    with psycopg.connect(stack_env.db_url) as conn:
        assert conn.execute("SELECT status FROM streamflow.ingestion_runs").fetchall() == [("success",)]


def test_ingest_dag_fails_a_broken_month_with_its_reasons(ingest_dag, stack_env):
    from streamflow_mlops.data.ingest import BatchRejected

    write_drop(DropSpec(1, users=120, broken="negative_fee"), stack_env.drops_dir)
    with pytest.raises(BatchRejected, match=r"expect_column_values_to_be_between\(monthly_fee"):
        run_ingest(ingest_dag, "month_001")
    with psycopg.connect(stack_env.db_url) as conn:
        assert conn.execute("SELECT month, status FROM streamflow.ingestion_runs").fetchall() == [
            ("month_001", "rejected")
        ]
        assert conn.execute("SELECT count(*) FROM streamflow.users").fetchone() == (0,)
