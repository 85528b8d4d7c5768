"""Realized-performance metrics, the decay gate, and the Evidently classification report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from streamflow_mlops.monitoring.drift import RETRAIN, SKIP, drift_gate
from streamflow_mlops.monitoring.performance import (
    DEFAULT_DECAY_THRESHOLD,
    combine_gates,
    decay_gate,
    drift_check_decision,
    lift_at,
    performance_report,
    realized_metrics,
    reliability_table,
    retrain_causes,
)


def sample(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.random(n)
    labels = (rng.random(n) < scores).astype(int)
    return labels, scores


def test_decay_beyond_the_threshold_retrains():
    assert decay_gate(0.80, 0.85, 0.025)[0] == RETRAIN
    assert decay_gate(0.84, 0.85, 0.025)[0] == SKIP
    # A model doing better than its validation is no reason to retrain.
    assert decay_gate(0.90, 0.85, 0.025)[0] == SKIP
    assert decay_gate(0.825, 0.85, 0.025)[0] == SKIP  # exactly the threshold: not beyond it
    decision, reason = decay_gate(0.80, 0.85, 0.025)
    assert "0.8000" in reason and "0.8500" in reason


def test_nothing_to_compare_skips_and_a_bad_threshold_raises():
    assert decay_gate(None, 0.85, DEFAULT_DECAY_THRESHOLD)[0] == SKIP
    assert decay_gate(0.8, None, DEFAULT_DECAY_THRESHOLD)[0] == SKIP
    with pytest.raises(ValueError):
        decay_gate(0.8, 0.85, -0.1)


def test_either_gate_retrains():
    skip, retrain = (SKIP, "quiet"), (RETRAIN, "loud")
    assert combine_gates(skip, skip)[0] == SKIP
    assert combine_gates(retrain, skip)[0] == RETRAIN
    assert combine_gates(skip, retrain) == (RETRAIN, "drift: quiet; decay: loud")


def test_the_drift_check_decides_on_drift_alone_without_a_champion_and_on_both_gates_with_one():
    measured = {"auc": 0.80, "validation_auc": 0.85}
    assert drift_check_decision(None, 0.3, {}, 0.02, has_champion=False) == drift_gate(None, 0.3, False)
    assert drift_check_decision(0.1, 0.3, measured, 0.02, has_champion=True) == combine_gates(
        drift_gate(0.1, 0.3, True), decay_gate(0.80, 0.85, 0.02)
    )
    assert drift_check_decision(0.1, 0.3, measured, 0.02, has_champion=True)[0] == RETRAIN
    assert drift_check_decision(0.1, 0.3, {"status": "skipped"}, 0.02, has_champion=True)[0] == SKIP


def test_realized_metrics_agree_with_sklearn_and_their_definitions():
    labels, scores = sample()
    metrics = realized_metrics(labels, scores)
    assert metrics["rows"] == 2000 and metrics["positives"] == labels.sum()
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert metrics["brier"] == pytest.approx(brier_score_loss(labels, scores))
    assert 0 < metrics["pr_auc"] <= 1
    # A perfect ranking puts only churners in the top 10%: lift = 1 / churn rate.
    ideal = labels.astype(float)
    assert lift_at(labels, ideal) == pytest.approx(1 / labels.mean())
    assert realized_metrics(labels, ideal)["auc"] == 1.0
    with pytest.raises(ValueError, match="both classes"):
        realized_metrics(np.zeros(10), np.linspace(0, 1, 10))


def test_a_random_ranking_has_lift_near_one():
    rng = np.random.default_rng(3)
    labels = (rng.random(20_000) < 0.26).astype(int)
    assert abs(lift_at(labels, rng.random(20_000)) - 1) < 0.1


def test_reliability_table_covers_every_row_in_score_order():
    labels, scores = sample()
    table = reliability_table(labels, scores)
    assert sum(b["rows"] for b in table) == 2000 and len(table) == 10
    predicted = [b["mean_predicted"] for b in table]
    assert predicted == sorted(predicted)
    # These scores are calibrated by construction: each decile's churn rate is near its mean score.
    assert all(abs(b["mean_predicted"] - b["observed_rate"]) < 0.1 for b in table)


@pytest.mark.slow
def test_evidently_report_has_the_same_auc_and_brier():
    labels, scores = sample(800)
    frame = pd.DataFrame({"user_id": [f"{i:04d}-AAAAA" for i in range(800)], "churn_label": labels,
                          "churn_probability": scores})  # fmt: skip
    values = {m["metric_name"]: m["value"] for m in performance_report(frame, 0.5).dict()["metrics"]}
    auc = next(v for k, v in values.items() if k.startswith("RocAuc"))
    brier = next(v for k, v in values.items() if k.startswith("BrierScore"))
    assert auc == pytest.approx(roc_auc_score(labels, scores))
    assert brier == pytest.approx(brier_score_loss(labels, scores))


@pytest.mark.parametrize(
    ("drift_share", "auc", "causes"),
    [
        (0.5, 0.87, ["drift"]),
        (0.071, 0.80, ["decay"]),
        (0.5, 0.80, ["drift", "decay"]),
        (None, None, ["first training"]),
    ],
)
def test_the_retrain_causes_are_the_gates_that_fired(drift_share, auc, causes):
    performance = {"auc": auc, "validation_auc": 0.8735}
    assert retrain_causes(drift_share, 0.3, performance, 0.04) == causes
    if drift_share is not None:  # the same gates as the decision
        assert (drift_check_decision(drift_share, 0.3, performance, 0.04, has_champion=True)[0] == RETRAIN) == bool(
            causes
        )
