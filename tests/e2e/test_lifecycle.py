"""The whole lifecycle through real Airflow processes, MLflow, Feast and a served bento.

The same `Stack` as `make demo`, on free ports, a temp state dir and a fresh database on the test
Postgres: month_000 and the drifted month_001 go through the Asset chain, then a broken batch
is rejected while the stack runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import psycopg
import pytest
from mlflow import MlflowClient

from streamflow_mlops.config.settings import CHAMPION_ALIAS, REGISTERED_MODEL, get_settings
from streamflow_mlops.platform.demo import Stack
from streamflow_mlops.platform.lifecycle import SCORE_DAG
from streamflow_mlops.synthetic.generate import DropSpec, write_drop
from tests.conftest import STACK_PORTS, listening_ports, stack_port_env

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
        "BENTOML_HOME": str(home / "bentoml"),
        **stack_port_env(),
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


def test_the_lifecycle_ends_with_the_newest_month_scored_by_the_champion(stack):
    """`make demo`'s summary is read right after the lifecycle: no scoring run may still be on its way."""
    champion = MlflowClient(stack.mlflow_uri).get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS).version
    with psycopg.connect(stack.settings.db_url) as conn:
        scored = conn.execute(
            "SELECT month, max(model_version) FROM streamflow.churn_scores GROUP BY month ORDER BY month"
        ).fetchall()
    assert scored[-1] == ("month_001", champion)
    assert all(run["state"] == "success" for run in stack.api.runs(SCORE_DAG))


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


def test_the_stack_listens_only_on_the_ports_it_was_given(stack):
    """A `make demo` on the same machine holds the default ports: every socket the stack's processes
    listen on is one of its free ports or one the OS picked (a bind to port 0, in the ephemeral range)."""
    given = {getattr(stack.settings, field) for field in STACK_PORTS}
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    listening = listening_ports(stack.processes)
    assert {port: name for port, name in listening.items() if port not in given and not low <= port <= high} == {}
    served = {stack.settings.airflow_port, stack.settings.mlflow_port, stack.settings.service_port}
    assert served | {stack.settings.evidently_port} <= set(listening)


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


def wait_for_review(stack, run_id: str, timeout: float = 600) -> None:
    """Until the run's `review` task waits for a person (Airflow's `awaiting_input` state)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = stack.api.task_states("streamflow_train", run_id)
        if states.get("review") == "awaiting_input":
            # The task records the request (the state turns awaiting_input) and runs on for a few
            # seconds before it parks; an answer inside that window failed the task and it asked
            # again (seen once here): a known race, answered after the task has parked.
            time.sleep(20)
            if stack.api.task_states("streamflow_train", run_id).get("review") == "awaiting_input":
                return
        assert "failed" not in states.values() and "upstream_failed" not in states.values(), states
        stack.processes.check()
        time.sleep(2)
    raise TimeoutError(f"streamflow_train {run_id}: no review waiting after {timeout:.0f}s")


def answer_review(stack, run_id: str, option: str, comment: str) -> dict:
    """Answer the review as a person does in Required Actions, through the REST API's hitlDetails."""
    path = f"/api/v2/dags/streamflow_train/dagRuns/{run_id}/taskInstances/review/-1/hitlDetails"
    waiting = stack.api._client.get(path)
    assert waiting.status_code == 200, waiting.text
    body = waiting.json()["body"]
    assert "challenger AUC" in body and "users would leave the list" in body and "Realized performance" in body
    assert waiting.json()["options"] == ["Approve", "Reject"]
    answer = stack.api._client.patch(path, json={"chosen_options": [option], "params_input": {"comment": comment}})
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture
def month_000_champion(stack):
    """The month_000 model as champion: a month_001 challenger would replace it (as v2 did)."""
    client = MlflowClient(stack.mlflow_uri)
    first = min(int(v.version) for v in client.search_model_versions(f"name='{REGISTERED_MODEL}'"))
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, str(first))
    return client, str(first)


def newest_version(client):
    return max(client.search_model_versions(f"name='{REGISTERED_MODEL}'"), key=lambda v: int(v.version))


def test_a_rejected_promotion_keeps_the_champion_and_an_approved_one_moves_it(stack, month_000_champion):
    client, champion = month_000_champion
    conf = {"month": "month_001", "seed": 11, "approval": "human"}
    run_id = stack.api.trigger("streamflow_train", conf)
    wait_for_review(stack, run_id)
    answered = answer_review(stack, run_id, "Reject", "campaign freeze until January")
    assert answered["chosen_options"] == ["Reject"]
    assert wait_for_run(stack, "streamflow_train", run_id) == "success"
    assert stack.api.task_states("streamflow_train", run_id)["promote"] == "skipped"
    rejected = newest_version(client)
    assert client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS).version == champion
    assert rejected.tags["approval"] == "rejected" and rejected.tags["approval_by"] == "admin"
    assert rejected.tags["approval_comment"] == "campaign freeze until January"
    assert rejected.tags["decision"] == "keep_champion" and "rejected by admin" in rejected.tags["reason"]
    assert "| approval | rejected by admin" in client.get_model_version(REGISTERED_MODEL, rejected.version).description

    run_id = stack.api.trigger("streamflow_train", {**conf, "seed": 12})
    wait_for_review(stack, run_id)
    answer_review(stack, run_id, "Approve", "")
    assert wait_for_run(stack, "streamflow_train", run_id) == "success"
    approved = newest_version(client)
    assert client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS).version == approved.version
    assert approved.tags["approval"] == "approved" and approved.tags["approval_by"] == "admin"
    assert approved.tags["decision"] == "promoted" and approved.tags["approval_at"]
    impact = client.get_run(approved.run_id).data.metrics
    assert 0 <= impact["impact_top_k_entering"] <= 500 and -1 <= impact["impact_spearman"] <= 1


def test_an_unanswered_review_times_out_into_keeping_the_champion(stack, month_000_champion):
    client, champion = month_000_champion
    conf = {"month": "month_001", "seed": 13, "approval": "human", "approval_timeout": 0.005}  # 18 s
    run_id = stack.api.trigger("streamflow_train", conf)
    assert wait_for_run(stack, "streamflow_train", run_id) == "success"
    timed_out = newest_version(client)
    assert client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS).version == champion
    assert timed_out.tags["approval"] == "timed_out" and timed_out.tags["decision"] == "keep_champion"
