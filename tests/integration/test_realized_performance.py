"""Realized performance inside `run_drift_check`: real Postgres, Feast, MLflow registry and Evidently."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamflow_mlops.features.store import apply_repo
from streamflow_mlops.monitoring.drift import MONITORING_EXPERIMENT, drift_gate
from streamflow_mlops.monitoring.performance import combine_gates, decay_gate
from streamflow_mlops.pipelines.drift import run_drift_check
from streamflow_mlops.pipelines.performance import realized_performance
from streamflow_mlops.platform.demo import realized_lines
from tests.conftest import load_months
from tests.integration.test_drift_check import register_champion

pytestmark = pytest.mark.slow

USERS = 1500


def test_champion_is_scored_on_later_labels_recorded_once_and_gated(stack_env, tmp_path):
    from mlflow import MlflowClient

    load_months(stack_env.db_url, tmp_path / "drops", (0, 1), USERS)
    apply_repo()
    version = register_champion(stack_env, "month_000")

    # Its own training month's labels are not "realized": nothing is recorded.
    own = run_drift_check("month_000", 0.3)
    assert own["performance"]["status"] == "skipped" and "not later" in own["performance"]["reason"]
    assert realized_performance(stack_env.db_url) == []

    result = run_drift_check("month_001", 0.3, decay_threshold=0.02)
    performance = result["performance"]
    assert performance["status"] == "measured", performance["reason"]
    assert performance["model_version"] == version and performance["trained_month"] == "month_000"
    assert performance["rows"] == USERS and performance["as_of"] == "2024-02-29"
    assert 0.5 < performance["auc"] <= 1 and 0 < performance["brier"] < 0.25 and performance["lift_at_10"] > 1
    # The decision is both gates' verdict on exactly these numbers.
    drift = drift_gate(result["drift_share"], 0.3, True)
    assert (result["decision"], result["reason"]) == combine_gates(
        drift, decay_gate(performance["auc"], performance["validation_auc"], 0.02)
    )

    report = Path(performance["report_path"])
    assert report.is_file() and report.is_relative_to(stack_env.reports_dir)
    assert "<html" in report.read_text(encoding="utf-8")[:500].lower()
    client = MlflowClient(tracking_uri=stack_env.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(MONITORING_EXPERIMENT)
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.experiment_id == experiment.experiment_id
    assert run.data.metrics["realized_auc"] == pytest.approx(performance["auc"])
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id, "performance_reports")}
    assert f"performance_reports/{report.name}" in artifacts

    # A re-run replaces the (month, version) row instead of adding one.
    run_drift_check("month_001", 0.3)
    [row] = realized_performance(stack_env.db_url, "month_001")
    assert row["model_version"] == version and row["rows"] == USERS
    assert row["auc"] == pytest.approx(performance["auc"]) and row["validation_auc"] == performance["validation_auc"]
    [line] = realized_lines(stack_env)
    assert line.startswith(f"champion v{version} (trained month_000) on month_001: realized AUC {row['auc']:.3f}")
