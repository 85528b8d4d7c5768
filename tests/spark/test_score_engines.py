"""Train and score on both engines from the same drops: the same training set gives the same model
(metrics, with the same seed), and the same champion gives the same scores, ranks, deciles, arms,
reasons, retention lists and campaign rows. Real Spark (local[2]), Feast, MLflow and Postgres."""

from __future__ import annotations

import json

import pandas as pd
import psycopg
import pytest

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.settings import CHAMPION_ALIAS, REGISTERED_MODEL, get_settings
from streamflow_mlops.data.lake_load import load_drop as load_lake
from streamflow_mlops.data.spark import spark_session
from streamflow_mlops.features.store import apply_repo
from streamflow_mlops.pipelines.score import add_scores_to_dashboard, newest_loaded_month, score_month
from streamflow_mlops.pipelines.score_spark import month_scores
from streamflow_mlops.synthetic.generate import DropSpec
from tests.conftest import load_months

pytestmark = pytest.mark.slow
USERS = 600
TOP_K = 60
COLUMNS = [
    "month", "user_id", "as_of", "churn_probability", "rank", "decile", "model_version", "reasons",
    "monthly_fee", "expected_loss", "loss_rank", "arm",
]  # fmt: skip


def warehouse_scores(db_url: str) -> pd.DataFrame:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM streamflow.churn_scores ORDER BY rank").fetchall()
    return pd.DataFrame(rows, columns=COLUMNS)


def campaign_rows(db_url: str) -> list[tuple]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT month, user_id, as_of, arm, contacted, rank, rank_by, churn_probability, monthly_fee, "
            "expected_loss, control_share, model_version FROM streamflow.retention_campaigns ORDER BY rank"
        ).fetchall()


def run_metrics(run_id: str) -> dict[str, float]:
    from mlflow import MlflowClient

    metrics = MlflowClient(tracking_uri=get_settings().mlflow_tracking_uri).get_run(run_id).data.metrics
    return {k: v for k, v in metrics.items() if "second" not in k}


def test_both_engines_train_the_same_model_and_score_the_same_month(spark, stack_env, tmp_path, monkeypatch):
    from streamflow_mlops.model.tracking import configure_mlflow
    from streamflow_mlops.pipelines.train import train_and_register

    drops = tmp_path / "drops"
    load_months(stack_env.db_url, drops, (0, 1), USERS)
    apply_repo()
    trained = train_and_register("month_000", seed=42)
    configure_mlflow(stack_env).set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, trained["version"])
    postgres = score_month("month_001", top_k=TOP_K)
    postgres_rows = warehouse_scores(stack_env.db_url)
    postgres_campaign = campaign_rows(stack_env.db_url)
    postgres_lists = {k: pd.read_csv(postgres[k]) for k in ("retention_list", "control_list")}

    monkeypatch.setenv("STREAMFLOW_ENGINE", "spark")
    monkeypatch.setenv("STREAMFLOW_HOME", str(tmp_path / "spark-state"))
    get_settings.cache_clear()
    settings = get_settings()
    assert newest_loaded_month(settings.db_url) is None  # the lake is empty
    for m in (0, 1):
        load_lake(spark, settings.lake_url, drops / Month(m).name, DropSpec(m).as_of)
    assert newest_loaded_month(settings.db_url) == Month(1)
    apply_repo(settings)

    # Same training set, same seed: the same model, metric for metric.
    retrained = train_and_register("month_000", seed=42)
    assert run_metrics(retrained["run_id"]) == run_metrics(trained["run_id"])

    on_spark = score_month("month_001", top_k=TOP_K)
    for key in ("scored_users", "predicted_churn_rate", "treatment_users", "control_users", "top_k_min_probability"):
        assert on_spark[key] == postgres[key], key
    for key in ("mean_probability", "expected_loss_total", "top_k_expected_loss_by_expected_loss"):
        assert on_spark[key] == pytest.approx(postgres[key], rel=1e-12), key  # sums in another order
    lake_rows = month_scores(spark_session(), settings, Month(1)).toPandas()[COLUMNS].sort_values("rank")
    lake_rows = lake_rows.reset_index(drop=True)
    lake_rows["reasons"] = lake_rows["reasons"].map(json.loads)
    lake_rows["arm"] = lake_rows["arm"].where(lake_rows["arm"].notna(), None)
    pd.testing.assert_frame_equal(lake_rows, postgres_rows, check_dtype=False)
    assert campaign_rows(settings.db_url) == postgres_campaign
    for key, expected in postgres_lists.items():
        listed = pd.read_csv(on_spark[key])
        assert on_spark[key] != postgres[key]  # each engine's state dir
        listed["reasons"] = listed["reasons"].map(json.loads)
        expected["reasons"] = expected["reasons"].map(json.loads)
        pd.testing.assert_frame_equal(listed, expected)
    assert "realized performance" in add_scores_to_dashboard(on_spark, settings)
