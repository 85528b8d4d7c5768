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

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.settings import CHAMPION_ALIAS, REGISTERED_MODEL
from streamflow_mlops.features.retrieval import feature_frame
from streamflow_mlops.features.store import apply_repo
from streamflow_mlops.monitoring.campaigns import CONTROL, TREATMENT, arms, campaign_outcome
from streamflow_mlops.pipelines.campaigns import (
    campaign_for_labels,
    campaign_lines,
    campaign_outcomes,
    measure_campaigns,
    treated_users,
)
from streamflow_mlops.pipelines.score import (
    SCORING_EXPERIMENT,
    add_scores_to_dashboard,
    batch_model,
    champion_to_score,
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
            "SELECT month, user_id, as_of, churn_probability, rank, decile, model_version, reasons, "
            "monthly_fee, expected_loss, loss_rank, arm FROM streamflow.churn_scores ORDER BY month, rank"
        ).fetchall()


def test_scoring_a_month_twice_leaves_the_same_rows_the_list_and_a_run(stack_env, tmp_path):
    from mlflow import MlflowClient

    from streamflow_mlops.model.tracking import configure_mlflow
    from streamflow_mlops.pipelines.train import train_and_register

    load_months(stack_env.db_url, tmp_path / "drops", (0, 1), USERS)
    apply_repo()
    version = train_and_register("month_000", seed=42)["version"]
    configure_mlflow(stack_env).set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version)
    assert newest_loaded_month(stack_env.db_url) == Month(1)

    first = score_month("month_001", top_k=TOP_K)
    rows = table(stack_env.db_url)
    second = score_month("month_001", top_k=TOP_K)
    assert table(stack_env.db_url) == rows, "a re-run must leave exactly the same rows"
    assert first["scored_users"] == second["scored_users"] == len(rows) == USERS
    assert first["mlflow_run_id"] != second["mlflow_run_id"]

    # Probabilities are the champion's own predict_proba on the FeatureService's point-in-time features.
    model = batch_model(champion_to_score(stack_env))
    frame = feature_frame(Month(1)).set_index("user_id")
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

    # Expected loss = probability x the user's fee (the FeatureService's) x the 12-month horizon,
    # ranked by Postgres beside the probability.
    assert all(by_user[u][8] == frame.loc[u, "monthly_fee"] for u in frame.index)
    assert all(r[9] == pytest.approx(r[3] * r[8] * 12.0, rel=1e-12) for r in rows)
    by_loss = sorted(rows, key=lambda r: r[10])
    assert [r[10] for r in by_loss] == list(range(1, USERS + 1))
    assert [r[9] for r in by_loss] == sorted((r[9] for r in rows), reverse=True)
    assert first["top_k_expected_loss_by_expected_loss"] >= first["top_k_expected_loss_by_probability"]

    # The targeted users (default rank_by: expected loss) have an arm, the hash's, nobody else.
    targeted = by_loss[:TOP_K]
    assert {r[11] for r in by_loss[TOP_K:]} == {None}
    assert [r[11] for r in targeted] == arms([r[1] for r in targeted], Month(1), 0.1)
    assert first["control_users"] == sum(r[11] == CONTROL for r in targeted) > 0
    assert first["treatment_users"] + first["control_users"] == TOP_K

    # The contact list holds the treatment arm only, in expected-loss order; the control list the rest.
    path = stack_env.state_dir / "scores" / f"month_001_top{TOP_K}.csv"
    assert first["retention_list"] == str(path)
    assert first["control_list"] == str(stack_env.state_dir / "scores" / f"month_001_top{TOP_K}_control.csv")
    listed = {}
    for arm, key in ((TREATMENT, "retention_list"), (CONTROL, "control_list")):
        with open(first[key]) as handle:
            listed[arm] = list(csv.DictReader(handle))
        expected = [r for r in targeted if r[11] == arm]
        assert [r["user_id"] for r in listed[arm]] == [r[1] for r in expected]
        assert [int(r["rank"]) for r in listed[arm]] == [r[10] for r in expected]
        assert [float(r["churn_probability"]) for r in listed[arm]] == [r[3] for r in expected]
        assert [float(r["expected_loss"]) for r in listed[arm]] == [r[9] for r in expected]
        assert [int(r["decile"]) for r in listed[arm]] == [r[5] for r in expected]
        assert [json.loads(r["reasons"]) for r in listed[arm]] == [r[7] for r in expected]

    # retention_campaigns: the targeted users, written with the export, replaced by a re-run.
    with psycopg.connect(stack_env.db_url) as conn:
        campaign = conn.execute(
            "SELECT user_id, arm, contacted, rank, rank_by, churn_probability, expected_loss, control_share "
            "FROM streamflow.retention_campaigns WHERE month = 'month_001' ORDER BY rank"
        ).fetchall()
    assert campaign == [(r[1], r[11], r[11] == TREATMENT, r[10], "expected_loss", r[3], r[9], 0.1) for r in targeted]

    # One MLflow run per scoring, the list as its artifact.
    client = MlflowClient(tracking_uri=stack_env.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(SCORING_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert {r.info.run_id for r in runs} == {first["mlflow_run_id"], second["mlflow_run_id"]}
    for run in runs:
        assert run.data.params["month"] == "month_001" and run.data.params["model_version"] == version
        assert run.data.metrics["scored_users"] == USERS
        assert [a.path for a in client.list_artifacts(run.info.run_id, "retention_list")] == [
            f"retention_list/month_001_top{TOP_K}.csv",
            f"retention_list/month_001_top{TOP_K}_control.csv",
        ]
        assert run.data.params["rank_by"] == "expected_loss" and run.data.params["control_share"] == "0.1"

    # The dashboard: scores, and realized performance (labels exist, the champion trained on month_000).
    assert "realized performance" in add_scores_to_dashboard(second)


def test_a_campaign_is_measured_against_the_next_drops_labels_and_kept_out_of_realized_performance(stack_env, tmp_path):
    """month_001's list goes out; month_002 is generated with a treatment effect on the users of the
    exported contact list (the generator reads the CSV) and loaded with its contacts.csv; the
    measurement is the pure rule's on exactly those rows, and the treated users are the ones
    realized performance leaves out of month_002's labels."""
    from streamflow_mlops.data.warehouse import create_schema, load_drop
    from streamflow_mlops.model.registry import load_version
    from streamflow_mlops.model.tracking import configure_mlflow
    from streamflow_mlops.pipelines.performance import measure_realized_performance
    from streamflow_mlops.pipelines.score import labelled_scores
    from streamflow_mlops.pipelines.train import train_and_register
    from streamflow_mlops.synthetic.generate import (
        DropSpec,
        build_drop,
        find_contact_list,
        read_contact_list,
        write_drop,
    )

    users = 3000
    load_months(stack_env.db_url, tmp_path / "drops", (0, 1), users)
    apply_repo()
    version = train_and_register("month_000", seed=42)["version"]
    configure_mlflow(stack_env).set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version)
    summary = score_month("month_001", top_k=600, control_share=0.2)
    assert measure_campaigns() == [
        {"status": "pending", "month": "month_001", "reason": "month_002's labels are not loaded yet"}
    ]

    contact_list = find_contact_list(stack_env.state_dir / "scores", 1)
    assert str(contact_list) == summary["retention_list"]
    reached = read_contact_list(contact_list)
    spec = DropSpec(2, users=users, seed=42, treatment_effect=0.5)
    folder = write_drop(spec, tmp_path / "drops", reached=reached)
    with psycopg.connect(stack_env.db_url) as conn:
        create_schema(conn)
        with conn.transaction():
            counts = load_drop(conn, folder, spec.as_of)
    assert counts["contacts"] == len(reached) == summary["treatment_users"]

    (answer,) = measure_campaigns()
    assert answer["status"] == "measured" and answer["outcome_month"] == "month_002"
    labels = build_drop(spec, reached=reached)[0]["labels"].set_index("user_id")["churn_label"]
    with psycopg.connect(stack_env.db_url) as conn:
        rows = conn.execute(
            "SELECT user_id, arm, churn_probability, monthly_fee FROM streamflow.retention_campaigns "
            "WHERE month = 'month_001' ORDER BY user_id"
        ).fetchall()
    expected = campaign_outcome(
        np.array([r[1] for r in rows]),
        labels.loc[[r[0] for r in rows]].to_numpy(),
        np.array([r[2] for r in rows]),
        np.array([r[3] for r in rows]),
        12.0,
        reached=np.isin([r[0] for r in rows], reached),
    )
    assert {k: answer[k] for k in expected} == pytest.approx(expected)
    assert answer["reach_rate"] == 1.0 and answer["treated_users"] + answer["control_users"] == 600
    # A 50% cut of the treated users' risk: the treated arm churns less than the control arm.
    assert answer["difference"] < 0 and answer["difference_low"] < answer["difference"] < answer["difference_high"]
    (stored,) = campaign_outcomes(stack_env.db_url)
    assert stored["month"] == "month_001" and stored["difference"] == pytest.approx(answer["difference"])
    assert measure_campaigns()[0]["difference"] == answer["difference"], "a re-measure replaces the row"
    assert len(campaign_outcomes(stack_env.db_url)) == 1
    # The demo summary's lines: the list, then its outcome.
    listed_line, outcome_line = campaign_lines(stack_env.db_url)
    assert listed_line.startswith(
        f"campaign month_001: {answer['treated_users']} to contact, {answer['control_users']} held back "
        "(top by expected_loss"
    )
    assert outcome_line.startswith("  campaign month_001: churn treated") and "control calibration" in outcome_line

    # month_002's labels answer month_001's campaign: its treated users are what realized performance leaves out.
    assert campaign_for_labels(stack_env.db_url, spec.as_of) == Month(1)
    assert treated_users(stack_env.db_url, Month(1)) == frozenset(reached)
    # The decay gate's realized AUC and the dashboard's classification report on month_002 leave
    # them out; the control arm and the untargeted users stay.
    realized = measure_realized_performance(Month(2), load_version(configure_mlflow(stack_env), version), stack_env)
    assert realized["status"] == "measured" and realized["treated_excluded"] == len(reached)
    assert realized["rows"] == users - len(reached)
    scored = score_month("month_002", top_k=600, control_share=0.2)
    kept = labelled_scores(stack_env.db_url, Month(2), scored["scored_users"], 10 * users)
    assert len(kept) == users - len(reached) and not kept["user_id"].isin(reached).any()

    # Re-exporting by probability replaces the month's campaign: the top by rank now, the same hash.
    again = score_month("month_001", top_k=600, control_share=0.2, rank_by="probability")
    with psycopg.connect(stack_env.db_url) as conn:
        ranks = conn.execute(
            "SELECT rank, arm, rank_by FROM streamflow.retention_campaigns WHERE month = 'month_001' ORDER BY rank"
        ).fetchall()
    assert [r[0] for r in ranks] == list(range(1, 601)) and {r[2] for r in ranks} == {"probability"}
    assert again["treatment_users"] == sum(r[1] == TREATMENT for r in ranks)
