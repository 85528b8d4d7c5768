"""Real training on a generated drop, logged to a real MLflow store (sqlite in tmp_path)."""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import FEATURE_NAMES, LABEL
from streamflow_mlops.config.settings import EXPERIMENT, FEATURE_SERVICE, REGISTERED_MODEL
from streamflow_mlops.model.training import (
    best_achievable_auc,
    best_f1_threshold,
    frame_from_tables,
    split_frame,
    train_model,
)
from streamflow_mlops.pipelines.train import log_challenger
from streamflow_mlops.synthetic.generate import DropSpec, build_drop
from tests.conftest import load_months

SPEC = DropSpec(month=0, users=1500, seed=11)


@lru_cache(maxsize=1)
def month_000() -> tuple[pd.DataFrame, pd.DataFrame]:
    tables, truth = build_drop(SPEC)
    return frame_from_tables(tables, SPEC.as_of), truth


def test_split_is_stratified_seeded_and_independent_of_row_order():
    frame, _ = month_000()
    train, val = split_frame(frame, seed=3)
    shuffled_train, shuffled_val = split_frame(frame.sample(frac=1, random_state=0), seed=3)
    assert list(val["user_id"]) == list(shuffled_val["user_id"])
    assert len(val) == 300 and not set(train["user_id"]) & set(val["user_id"])
    assert abs(val[LABEL].mean() - frame[LABEL].mean()) < 0.005
    assert list(split_frame(frame, seed=4)[1]["user_id"]) != list(val["user_id"])


def test_best_f1_threshold_beats_every_other_cut():
    rng = np.random.default_rng(0)
    labels = (rng.random(400) < 0.3).astype(int)
    scores = np.clip(labels * 0.3 + rng.random(400) * 0.7, 0, 1)
    threshold, best = best_f1_threshold(labels, scores)
    from sklearn.metrics import f1_score

    assert f1_score(labels, scores >= threshold) == pytest.approx(best)
    for cut in np.linspace(0.05, 0.95, 19):
        assert f1_score(labels, scores >= cut, zero_division=0) <= best + 1e-12


def test_same_month_and_seed_give_the_same_model_and_metrics():
    frame, _ = month_000()
    first = train_model(frame, seed=5)
    again = train_model(frame.sample(frac=1, random_state=1), seed=5)
    metrics = {k: v for k, v in first.metrics.items() if k != "train_seconds"}
    assert metrics == {k: v for k, v in again.metrics.items() if k != "train_seconds"}
    np.testing.assert_array_equal(first.val_scores, again.val_scores)
    # The seed moves the threshold's CV folds and a seeded classifier, never the evaluation rows.
    other = train_model(frame, seed=6, classifier="hgb")
    assert list(other.val.frame()["user_id"]) == list(first.val.frame()["user_id"])
    assert other.metrics["val_auc"] != train_model(frame, seed=5, classifier="hgb").metrics["val_auc"]


def test_pipeline_takes_raw_feature_columns_by_name_in_any_order():
    frame, _ = month_000()
    trained = train_model(frame, seed=5)
    rows = trained.val.head(3)[list(reversed(FEATURE_NAMES))]
    assert trained.pipeline.predict_proba(rows).shape == (3, 2)
    with pytest.raises(ValueError, match="lacks columns"):
        train_model(frame.drop(columns=["monthly_fee"]), seed=5)


@pytest.mark.slow
def test_log_challenger_records_run_model_dataset_plots_and_version(stack_env):
    import mlflow
    from mlflow import MlflowClient

    frame, truth = month_000()
    trained = train_model(frame, seed=5)
    challenger = log_challenger(trained, month=Month(0), feature_service=FEATURE_SERVICE, truth=truth)
    json.dumps(challenger)  # an XCom: must be JSON-serialisable

    client = MlflowClient(stack_env.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location.startswith(stack_env.mlflow_artifacts_dir.resolve().as_uri())
    run = client.get_run(challenger["run_id"])
    assert run.data.params["month"] == "month_000" and run.data.params["as_of"] == "2024-01-31"
    assert run.data.params["feature_service"] == FEATURE_SERVICE and run.data.params["seed"] == "5"
    assert run.data.params["model"] == trained.classifier
    for metric in ("val_auc", "val_f1", "val_accuracy", "val_precision", "val_recall", "threshold", "train_seconds"):
        assert metric in run.data.metrics, metric
    assert run.data.metrics["best_achievable_auc"] == pytest.approx(best_achievable_auc(truth, trained.val))
    assert challenger["val_auc"] == pytest.approx(trained.metrics["val_auc"])

    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"month_000-training", "month_000-validation"}
    source = json.loads(inputs["month_000-training"].dataset.source)
    assert source["as_of"] == "2024-01-31" and "usage_agg_30d_snapshots" in source["snapshot_tables"]

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/roc_curve.png", "plots/confusion_matrix.png"}

    version = client.get_model_version(REGISTERED_MODEL, challenger["version"])
    for tag in ("month", "as_of", "feature_service", "decision", "reason"):
        assert tag in version.tags, tag
    assert float(version.tags["threshold"]) == trained.threshold

    # Logged whole: the registered model takes raw features and gives probabilities.
    pyfunc = mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL}/{challenger['version']}")
    assert pyfunc.metadata.get_input_schema().input_names() == list(FEATURE_NAMES)
    probabilities = np.asarray(pyfunc.predict(trained.val.head(4)[list(FEATURE_NAMES)]))
    np.testing.assert_allclose(probabilities[:, 1], trained.val_scores[:4])

    # The same month and seed logged again: the same metrics (all but the wall-clock time).
    again = log_challenger(train_model(frame, seed=5), month=Month(0), feature_service=FEATURE_SERVICE)
    again_metrics = client.get_run(again["run_id"]).data.metrics
    for name, value in run.data.metrics.items():
        if name not in ("train_seconds", "best_achievable_auc", "val_auc_vs_best"):
            assert again_metrics[name] == value, name


@pytest.mark.slow
def test_train_and_register_reads_the_feature_service_through_feast(stack_env):
    from mlflow import MlflowClient

    from streamflow_mlops.features.store import apply_repo
    from streamflow_mlops.pipelines.train import train_and_register

    load_months(stack_env.db_url, stack_env.drops_dir, (0,), users=800, seed=11)
    apply_repo()

    challenger = train_and_register("month_000", seed=3)
    assert challenger["month"] == "month_000" and challenger["as_of"] == "2024-01-31"
    assert challenger["feature_service"] == FEATURE_SERVICE
    # The truth file sits in the drop folder, so the ceiling is logged next to the model's AUC.
    assert 0.5 < challenger["val_auc"] <= 1 and challenger["best_achievable_auc"] is not None
    run = MlflowClient(stack_env.mlflow_tracking_uri).get_run(challenger["run_id"])
    params = run.data.params
    assert int(params["n_train"]) + int(params["n_val"]) == 800 and abs(int(params["n_val"]) - 160) < 40
    assert run.data.params["n_features"] == str(len(FEATURE_NAMES))
