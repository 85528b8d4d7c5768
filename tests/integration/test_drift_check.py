"""`run_drift_check` end to end: real Postgres, real Feast repo, real MLflow registry, real Evidently."""

from __future__ import annotations

from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import psycopg
import pytest

from streamflow_mlops.config.settings import CHAMPION_ALIAS, REGISTERED_MODEL
from streamflow_mlops.features.retrieval import feature_frame
from streamflow_mlops.features.store import apply_repo
from streamflow_mlops.monitoring.drift import MONITORING_EXPERIMENT, RETRAIN, SKIP
from streamflow_mlops.pipelines.drift import run_drift_check
from tests.conftest import load_months

# Above 1,000 reference rows Evidently picks the same tests (normed Wasserstein, Jensen-Shannon)
# as on a full 7,043-user month, so the decision here is the one production would take.
USERS = 1500
SERVED = 200


def register_champion(settings, month: str) -> str:
    """Train and register through the training DAG's own code, then point the alias at it."""
    from streamflow_mlops.model.tracking import configure_mlflow
    from streamflow_mlops.pipelines.train import train_and_register

    version = train_and_register(month, seed=42)["version"]
    configure_mlflow(settings).set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version)
    return version


def log_served_predictions(settings, version: str, month: str, rows: int, shadow: str) -> tuple:
    """The champion's predictions as the service logs them, with `shadow`'s beside them; both scorings."""
    from streamflow_mlops.config.months import Month
    from streamflow_mlops.model.registry import load_version, score_pipeline
    from streamflow_mlops.model.tracking import configure_mlflow

    frame = feature_frame(Month.parse(month)).iloc[:rows]
    registry = configure_mlflow(settings)
    scores, shadow_scores = (score_pipeline(v, load_version(registry, v).pipeline(), frame) for v in (version, shadow))
    now = datetime(2024, 3, 1, tzinfo=UTC)
    with psycopg.connect(settings.db_url) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO streamflow.prediction_log (predicted_at, user_id, features, churn_probability, "
                "model_name, model_version, shadow_version, shadow_probability) "
                "VALUES (%s, %s, '{}', %s, %s, %s, %s, %s)",
                [
                    (now, u, float(s), REGISTERED_MODEL, version, shadow, float(t))
                    for u, s, t in zip(frame["user_id"], scores, shadow_scores, strict=True)
                ],
            )
    return scores, shadow_scores


def html_tags(text: str) -> set[str]:
    tags: set[str] = set()

    class Collector(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.add(tag)

    Collector().feed(text)
    return tags


def drift_rows(settings) -> list[tuple]:
    with psycopg.connect(settings.db_url) as conn:
        return conn.execute(
            "SELECT month, reference_month, drift_share, drifted_columns, prediction_drift, decision, reason, "
            "report_path FROM streamflow.drift_reports ORDER BY id"
        ).fetchall()


def monitoring_runs(settings):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(MONITORING_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return client, runs


def test_empty_system_triggers_the_first_training(stack_env, tmp_path):
    load_months(stack_env.db_url, tmp_path / "drops", (0,), USERS)
    result = run_drift_check("month_000", 0.3)
    assert result["decision"] == RETRAIN and "no champion" in result["reason"]
    assert result["reference_month"] is None and result["report_path"] is None
    [row] = drift_rows(stack_env)
    assert row[0] == "month_000" and row[1] is None and row[5] == RETRAIN
    _, [run] = monitoring_runs(stack_env)
    assert run.data.tags["decision"] == RETRAIN


@pytest.mark.slow
def test_drifted_month_retrains_and_undrifted_skips(stack_env, tmp_path):
    load_months(stack_env.db_url, tmp_path / "drops", (0, 1), USERS)
    apply_repo()
    from streamflow_mlops.model.tracking import configure_mlflow
    from streamflow_mlops.monitoring.shadow_agreement import shadow_agreement
    from streamflow_mlops.pipelines.train import train_and_register

    version = register_champion(stack_env, "month_000")
    # A challenger trained on the drifted month, scored in shadow beside the champion.
    shadow = train_and_register("month_001", seed=7)["version"]
    scores, shadow_scores = log_served_predictions(stack_env, version, "month_001", SERVED, shadow)

    drifted = run_drift_check("month_001", 0.3)
    assert drifted["decision"] == RETRAIN, drifted["reason"]
    assert drifted["reference_month"] == "month_000"
    assert drifted["drift_share"] >= 0.3
    assert {"monthly_fee", "watch_hours_30d", "rebuffer_events_7d"} <= set(drifted["drifted_columns"])
    prediction = drifted["prediction_drift"]
    assert prediction["champion_version"] == version
    assert prediction["reference_vs_current"]["drifted"]
    assert prediction["served_rows"] == SERVED and prediction["reference_vs_served"]["rows"] == SERVED

    [agreement] = drifted["shadow_agreement"]
    registry = configure_mlflow(stack_env)
    thresholds = [float(registry.get_model_version(REGISTERED_MODEL, v).tags["threshold"]) for v in (version, shadow)]
    expected = shadow_agreement(scores, shadow_scores, *thresholds)
    assert agreement == pytest.approx({"champion_version": version, "shadow_version": shadow, **expected})
    assert agreement["rows"] == SERVED and 0 < agreement["mean_abs_difference"] < 0.5
    assert 0.5 < agreement["decision_agreement"] <= 1 and agreement["correlation"] > 0.5

    report = Path(drifted["report_path"])
    assert report.is_file() and report.is_relative_to(stack_env.reports_dir)
    text = report.read_text(encoding="utf-8")
    assert text.lstrip().lower().startswith(("<!doctype html", "<html"))
    assert {"html", "body", "script"} <= html_tags(text)

    same = run_drift_check("month_000", 0.3)
    assert same["decision"] == SKIP and same["drift_share"] == 0.0 and same["drifted_columns"] == []
    assert same["prediction_drift"]["reference_vs_served"] is not None  # served traffic is the champion's

    rows = drift_rows(stack_env)
    assert [(r[0], r[1], r[5]) for r in rows] == [("month_001", "month_000", RETRAIN), ("month_000", "month_000", SKIP)]
    assert rows[0][2] == pytest.approx(drifted["drift_share"]) and rows[0][3] == drifted["drifted_columns"]
    assert rows[0][4]["reference_vs_current"]["score"] == pytest.approx(prediction["reference_vs_current"]["score"])
    assert rows[0][7] == drifted["report_path"]

    client, runs = monitoring_runs(stack_env)
    assert [r.data.tags["decision"] for r in runs] == [RETRAIN, SKIP]
    artifacts = [f.path for f in client.list_artifacts(runs[0].info.run_id, "drift_reports")]
    assert f"drift_reports/{report.name}" in artifacts
    assert runs[0].data.metrics["drift_share"] == pytest.approx(drifted["drift_share"])
    metric = runs[0].data.metrics[f"shadow_v{shadow}_decision_agreement"]
    assert metric == pytest.approx(agreement["decision_agreement"])
