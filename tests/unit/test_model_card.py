"""The model card's markdown from registry facts (pure), and its calibration plot."""

from __future__ import annotations

import numpy as np

from streamflow_mlops.model.model_card import calibration_plot, model_card_markdown

TAGS = {
    "month": "month_001",
    "as_of": "2024-02-29",
    "feature_service": "churn_model_v1",
    "model": "spline_logreg",
    "seed": "42",
    "threshold": "0.3012",
    "decision": "promote",
    "reason": "AUC gain 0.0123 >= delta 0.005, interval above zero",
    "delta": "0.005",
    "champion_version": "1",
    "champion_auc": "0.8512",
    "auc_gain": "0.0123",
    "auc_gain_ci_low": "0.004",
    "auc_gain_ci_high": "0.021",
    "auc_gain_ci_level": "0.95",
}
PARAMS = {"n_train": "5634", "n_val": "1409", "n_features": "14", "model_class": "LogisticRegression"}
METRICS = {"val_auc": 0.8635, "val_average_precision": 0.67, "val_f1": 0.62, "best_achievable_auc": 0.88}


def test_card_states_the_decision_window_features_metrics_and_interval():
    card = model_card_markdown("2", TAGS, PARAMS, METRICS, "abc123")
    assert card.startswith("# streamflow_churn v2\n")
    for text in (
        "**Decision: promote**: AUC gain 0.0123 >= delta 0.005",
        "month_001: features point-in-time at as_of 2024-02-29",
        "`churn_model_v1` (14 features)",
        "5634 training, 1409 validation",
        "| decision threshold | 0.3012",
        "champion v1 (0.8512): 0.0123, 95% paired-bootstrap interval [0.0040, 0.0210], required gain 0.005",
        "| ROC AUC | 0.8635 |",
        "| best achievable AUC (generator's truth) | 0.8800 |",
        "Not known yet",
        "runs:/abc123/model_card/calibration.png",
    ):
        assert text in card, text


def test_first_model_and_realized_performance():
    first = {k: v for k, v in TAGS.items() if not k.startswith(("auc_gain", "champion"))}
    card = model_card_markdown(
        "1", first, PARAMS, METRICS, "r", realized=[{"month": "month_002", "rows": 7043, "auc": 0.851}]
    )
    assert "no champion to compare with (first model)" in card
    assert "| month_002 | 7043 | 0.8510 |" in card and "Not known yet" not in card


def test_calibration_plot_is_a_png(tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.random(2000)
    labels = (rng.random(2000) < scores).astype(int)
    path = tmp_path / "calibration.png"
    calibration_plot(labels, scores, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
