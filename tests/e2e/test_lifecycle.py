"""The whole lifecycle through real Airflow processes, MLflow, Feast and a served bento.

The same `Stack` as `make demo`, on free ports, a temp state dir and a fresh database on the test
Postgres: month_000 and the drifted month_001 go through the Asset chain, then a broken batch
is rejected while the stack runs.
"""

from __future__ import annotations

import time

import httpx
import psycopg
import pytest
from mlflow import MlflowClient

from streamflow_mlops.config.settings import CHAMPION_ALIAS, REGISTERED_MODEL, get_settings
from streamflow_mlops.platform.demo import Stack
from streamflow_mlops.synthetic.generate import DropSpec, write_drop
from tests.conftest import free_port

pytestmark = pytest.mark.slow

RAW = ("users", "subscriptions", "usage_agg_30d", "payments_agg_90d", "support_agg_90d", "labels")


def warehouse_state(conn) -> dict[str, list]:
    return {t: conn.execute(f"SELECT * FROM streamflow.{t} ORDER BY as_of, user_id").fetchall() for t in RAW}


@pytest.fixture(scope="module")
def stack(disposable_pg_server, tmp_path_factory):
    pg_server = disposable_pg_server
    home = tmp_path_factory.mktemp("e2e")
    env = {
        "STREAMFLOW_HOME": str(home / "state"),
        "STREAMFLOW_DROPS_DIR": str(home / "drops"),
        "STREAMFLOW_AIRFLOW_PORT": str(free_port()),
        "STREAMFLOW_MLFLOW_PORT": str(free_port()),
        "STREAMFLOW_SERVICE_PORT": str(free_port()),
        "BENTOML_HOME": str(home / "bentoml"),
    }
    with psycopg.connect(pg_server, autocommit=True) as conn:
        for db in ("e2e_streamflow", "airflow", "mlflow"):
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    env["STREAMFLOW_DB_URL"] = pg_server.rsplit("/", 1)[0] + "/e2e_streamflow"
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    stack = Stack(get_settings())
    try:
        stack.start()
        stack.lifecycle()
        stack.serve()
        yield stack
    finally:
        stack.stop()
        patch.undo()
        get_settings.cache_clear()


def test_ingestion_and_snapshots(stack):
    with psycopg.connect(stack.settings.db_url) as conn:
        runs = conn.execute(
            "SELECT month, status, row_counts FROM streamflow.ingestion_runs WHERE status = 'success' ORDER BY month"
        ).fetchall()
        assert [r[0] for r in runs] == ["month_000", "month_001"]
        assert all(r[2]["users"] == 7043 for r in runs)
        for table in (
            "subscriptions_profile_snapshots",
            "usage_agg_30d_snapshots",
            "payments_agg_90d_snapshots",
            "support_agg_90d_snapshots",
        ):
            per_month = conn.execute(f"SELECT as_of::date, count(*) FROM streamflow.{table} GROUP BY 1 ORDER BY 1")
            assert [n for _, n in per_month] == [7043, 7043], table


def test_models_and_champion(stack):
    client = MlflowClient(stack.mlflow_uri)
    versions = client.search_model_versions(f"name='{REGISTERED_MODEL}'")
    assert len(versions) == 2
    # Both trainings were scheduled by the drift gate's `streamflow_retrain_request` event, and
    # the month_001 version shows the month came from the event (the `month` param defaults to 000).
    assert [r["run_type"] for r in stack.api.runs("streamflow_train")] == ["asset_triggered"] * 2
    assert {v.tags["month"] for v in versions} == {"month_000", "month_001"}
    for v in versions:
        assert {"as_of", "feature_service", "decision", "reason"} <= set(v.tags)
        assert client.get_run(v.run_id).data.metrics["val_auc"] > 0.75
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS)
    assert champion.version in {v.version for v in versions}


def test_drift_decisions(stack):
    with psycopg.connect(stack.settings.db_url) as conn:
        rows = conn.execute(
            "SELECT month, reference_month, drift_share, decision, report_path "
            "FROM streamflow.drift_reports ORDER BY id"
        ).fetchall()
    assert [(r[0], r[3]) for r in rows] == [("month_000", "retrain"), ("month_001", "retrain")]
    assert rows[1][1] == "month_000" and rows[1][2] >= 0.3
    html = open(rows[1][4]).read()
    assert "<html" in html.lower()


def test_served_prediction_reads_online_features(stack):
    with psycopg.connect(stack.settings.db_url) as conn:
        user, fee = conn.execute(
            "SELECT user_id, monthly_fee FROM streamflow.subscriptions_profile_snapshots "
            "WHERE as_of = '2024-02-29' ORDER BY user_id LIMIT 1"
        ).fetchone()
    answer = httpx.post(f"{stack.service_url}/predict", json={"user_id": user}, timeout=10)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert 0 <= body["churn_probability"] <= 1
    assert body["features"]["monthly_fee"] == pytest.approx(fee)  # month_001's value, materialized online
    champion = MlflowClient(stack.mlflow_uri).get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS)
    assert body["model"] == {"name": REGISTERED_MODEL, "version": champion.version}
    unknown = httpx.post(f"{stack.service_url}/predict", json={"user_id": "0000-NOONE"}, timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_user"


def wait_for_run(stack, dag_id: str, run_id: str, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = next(r["state"] for r in stack.api.runs(dag_id) if r["dag_run_id"] == run_id)
        if state in ("success", "failed"):
            return state
        stack.processes.check()
        time.sleep(2)
    raise TimeoutError(f"{dag_id} {run_id} still running after {timeout:.0f}s")


def test_rollback_from_airflow_changes_the_served_model(stack):
    client = MlflowClient(stack.mlflow_uri)
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS).version
    other = next(v.version for v in client.search_model_versions(f"name='{REGISTERED_MODEL}'") if v.version != champion)
    run_id = stack.api.trigger("streamflow_rollback", {"version": str(other), "reason": "e2e rollback"})
    assert wait_for_run(stack, "streamflow_rollback", run_id) == "success"
    assert client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS).version == other
    with psycopg.connect(stack.settings.db_url) as conn:
        user = conn.execute("SELECT user_id FROM streamflow.labels ORDER BY user_id LIMIT 1").fetchone()[0]
    served = None
    for _ in range(60):  # the service polls the alias about every 10 s
        served = httpx.post(f"{stack.service_url}/predict", json={"user_id": user}, timeout=10).json()
        if served["model"]["version"] == str(other):
            break
        time.sleep(1)
    assert served["model"]["version"] == str(other)


def test_broken_batch_is_rejected_and_changes_nothing(stack):
    write_drop(DropSpec(2, users=7043, broken="negative_fee"), stack.settings.drops_dir)
    with psycopg.connect(stack.settings.db_url) as conn:
        before = warehouse_state(conn)
    run_id = stack.api.trigger("streamflow_ingest", {"month": "month_002"})
    assert wait_for_run(stack, "streamflow_ingest", run_id) == "failed"
    with psycopg.connect(stack.settings.db_url) as conn:
        assert warehouse_state(conn) == before
        status, failed = conn.execute(
            "SELECT status, failed_expectations FROM streamflow.ingestion_runs WHERE month = 'month_002'"
        ).fetchone()
    assert status == "rejected" and "monthly_fee" in str(failed)
