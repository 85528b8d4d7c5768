"""`score_month` end to end: real Postgres, real Feast repo, real MLflow registry, run twice.

The champion is trained and registered through the training DAG's own code on month_000; month_001
(drifted) is scored through the FeatureService point-in-time at its as_of, like the DAG does.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import psycopg
import pytest

from streamflow_mlops.config.settings import CHAMPION_ALIAS, REGISTERED_MODEL
from streamflow_mlops.features.retrieval import feature_frame
from streamflow_mlops.features.store import apply_repo
from streamflow_mlops.pipelines.score import (
    SCORING_EXPERIMENT,
    add_scores_to_dashboard,
    load_champion_model,
    newest_loaded_month,
    score_month,
)
from tests.conftest import load_months

pytestmark = pytest.mark.slow

USERS = 1200
TOP_K = 100


def table(db_url: str) -> list[tuple]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT month, user_id, as_of, churn_probability, rank, decile, model_version, reasons "
            "FROM streamflow.churn_scores ORDER BY month, rank"
        ).fetchall()


def test_scoring_a_month_twice_leaves_the_same_rows_the_list_and_a_run(stack_env, tmp_path):
    from mlflow import MlflowClient

    from streamflow_mlops.model.tracking import configure_mlflow
    from streamflow_mlops.pipelines.train import train_and_register

    load_months(stack_env.db_url, tmp_path / "drops", (0, 1), USERS)
    apply_repo()
    version = train_and_register("month_000", seed=42)["version"]
    configure_mlflow(stack_env).set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version)
    assert newest_loaded_month(stack_env.db_url) == "month_001"

    first = score_month("month_001", top_k=TOP_K)
    rows = table(stack_env.db_url)
    second = score_month("month_001", top_k=TOP_K)
    assert table(stack_env.db_url) == rows, "a re-run must leave exactly the same rows"
    assert first["scored_users"] == second["scored_users"] == len(rows) == USERS
    assert first["mlflow_run_id"] != second["mlflow_run_id"]

    # Probabilities are the champion's own predict_proba on the FeatureService's point-in-time features.
    _, model = load_champion_model(stack_env)
    frame = feature_frame("month_001").set_index("user_id")
    by_user = {row[1]: row for row in rows}
    expected = model.pipeline.predict_proba(frame[model.columns])[:, 1]
    assert [by_user[u][3] for u in frame.index] == expected.tolist()

    # Rank 1 is the riskiest, ties by user_id; decile = ceil(10 * rank / n).
    assert [r[4] for r in rows] == list(range(1, USERS + 1))
    probabilities = [r[3] for r in rows]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(r[5] == math.ceil(10 * r[4] / USERS) for r in rows)
    assert np.bincount([r[5] for r in rows])[1:].tolist() == [USERS // 10] * 10
    assert {r[0] for r in rows} == {"month_001"} and {r[6] for r in rows} == {version}

    # Reasons: at most three, positive, largest first, the user's own values.
    for row in rows[:50]:
        reasons = row[7]
        contributions = [r["contribution"] for r in reasons]
        assert len(reasons) <= 3 and contributions == sorted(contributions, reverse=True)
        assert all(c > 0 for c in contributions)
        for reason in reasons:
            value = frame.loc[row[1], reason["feature"]]
            assert reason["value"] == (value.item() if hasattr(value, "item") else value)
    assert any(len(r[7]) == 3 for r in rows)

    # The retention list: the first top_k rows of the table, as CSV under the state dir.
    path = stack_env.state_dir / "scores" / f"month_001_top{TOP_K}.csv"
    assert first["retention_list"] == str(path)
    with path.open() as handle:
        listed = list(csv.DictReader(handle))
    assert [r["user_id"] for r in listed] == [r[1] for r in rows[:TOP_K]]
    assert [float(r["churn_probability"]) for r in listed] == probabilities[:TOP_K]
    assert [int(r["decile"]) for r in listed] == [r[5] for r in rows[:TOP_K]]
    assert [json.loads(r["reasons"]) for r in listed] == [r[7] for r in rows[:TOP_K]]

    # One MLflow run per scoring, the list as its artifact.
    client = MlflowClient(tracking_uri=stack_env.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(SCORING_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert {r.info.run_id for r in runs} == {first["mlflow_run_id"], second["mlflow_run_id"]}
    for run in runs:
        assert run.data.params["month"] == "month_001" and run.data.params["model_version"] == version
        assert run.data.metrics["scored_users"] == USERS
        assert [a.path for a in client.list_artifacts(run.info.run_id, "retention_list")] == [
            f"retention_list/month_001_top{TOP_K}.csv"
        ]

    # The dashboard: scores, and realized performance (labels exist, the champion trained on month_000).
    assert "realized performance" in add_scores_to_dashboard(second)
