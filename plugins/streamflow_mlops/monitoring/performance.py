"""Realized performance: the champion's scores against labels it never trained on, and the decay gate.

`realized_metrics` and `reliability_table` are pure (labels and scores in, numbers out);
`decay_gate` is the retrain decision, a sibling of `drift.drift_gate`; `performance_report`
builds Evidently's classification report (quality, with a Brier score metric Evidently 0.7 lacks).
The edge that reads the month, scores the champion and records `model_performance` is
`pipelines/performance.py`.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from streamflow_mlops.config.schema import ENTITY, LABEL
from streamflow_mlops.monitoring.drift import RETRAIN, SCORE_COLUMN, SKIP, drift_gate

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from evidently.core.report import Snapshot

log = logging.getLogger(__name__)

# Above every loss of an undrifted month that bench/bench_honest.py measured, so noise in the
# validation AUC never retrains (docs/decisions.md, "Honest models", has the figures).
DEFAULT_DECAY_THRESHOLD = 0.04
LIFT_SHARE = 0.10
RELIABILITY_BINS = 10


def lift_at(labels: np.ndarray, scores: np.ndarray, share: float = LIFT_SHARE) -> float:
    """Churn rate among the top `share` of scores over the overall churn rate (1.0 = no better than random)."""
    import numpy as np

    y = np.asarray(labels, dtype=float)
    top = max(1, math.ceil(share * len(y)))
    # A stable sort on the negated scores keeps ties in row order, so the lift is reproducible.
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")[:top]
    return float(y[order].mean() / y.mean())


def realized_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """rows, positives, AUC, PR-AUC (average precision), lift at 10%, Brier score, mean score and churn rate."""
    import numpy as np
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    y = np.asarray(labels).astype(int)
    p = np.asarray(scores, dtype=float)
    if len(y) != len(p):
        raise ValueError("labels and scores must have the same length")
    if y.min(initial=1) == y.max(initial=0):
        raise ValueError("realized performance needs both classes among the labelled rows")
    return {
        "rows": int(len(y)),
        "positives": int(y.sum()),
        "auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "lift_at_10": lift_at(y, p),
        "brier": float(brier_score_loss(y, p)),
        "mean_score": float(p.mean()),
        "churn_rate": float(y.mean()),
    }


def reliability_table(labels: np.ndarray, scores: np.ndarray, bins: int = RELIABILITY_BINS) -> list[dict[str, float]]:
    """Calibration by score decile: rows, mean predicted probability and observed churn rate per bin."""
    import numpy as np

    y = np.asarray(labels, dtype=float)
    p = np.asarray(scores, dtype=float)
    order = np.argsort(p, kind="stable")
    table = []
    for index, rows in enumerate(np.array_split(order, bins)):
        if len(rows):
            table.append(
                {
                    "bin": index,
                    "rows": int(len(rows)),
                    "mean_predicted": float(p[rows].mean()),
                    "observed_rate": float(y[rows].mean()),
                }
            )
    return table


def decay_gate(realized_auc: float | None, validation_auc: float | None, threshold: float) -> tuple[str, str]:
    """`("retrain" | "skip", reason)`: retrain when the realized AUC is below the champion's own
    validation AUC by more than `threshold`; nothing to compare (no unseen labels yet) skips."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"decay_threshold must be within [0, 1], got {threshold}")
    if realized_auc is None or validation_auc is None:
        return SKIP, "no realized AUC: no labels the champion did not train on"
    loss = validation_auc - realized_auc
    comparison = f"realized AUC {realized_auc:.4f} vs validation {validation_auc:.4f} (loss {loss:+.4f})"
    # Float subtraction of AUCs (0.85 - 0.825) lands a hair above an exact threshold.
    if loss > threshold + 1e-12:
        return RETRAIN, f"{comparison} > decay threshold {threshold:.3f}"
    return SKIP, f"{comparison} <= decay threshold {threshold:.3f}"


def combine_gates(drift: tuple[str, str], decay: tuple[str, str]) -> tuple[str, str]:
    """Either gate retrains; the reason keeps what both said."""
    decision = RETRAIN if RETRAIN in (drift[0], decay[0]) else SKIP
    return decision, f"drift: {drift[1]}; decay: {decay[1]}"


def drift_check_decision(
    drift_share: float | None,
    drift_threshold: float,
    performance: dict[str, Any],
    decay_threshold: float,
    *,
    has_champion: bool,
) -> tuple[str, str]:
    """The drift check's `(decision, reason)`: the drift gate, and with a champion the decay gate on
    its realized performance beside it (either retrains)."""
    decision = drift_gate(drift_share, drift_threshold, has_champion)
    if not has_champion:
        return decision
    return combine_gates(
        decision, decay_gate(performance.get("auc"), performance.get("validation_auc"), decay_threshold)
    )


def retrain_causes(
    drift_share: float | None, drift_threshold: float, performance: dict[str, Any], decay_threshold: float
) -> list[str]:
    """Which of the drift check's gates ask for a retrain: `first training` (no drift measured, no
    champion), `drift`, `decay`; by the same rules as `drift_check_decision`."""
    if drift_share is None:
        return ["first training"]
    causes = []
    if drift_gate(drift_share, drift_threshold, has_champion=True)[0] == RETRAIN:
        causes.append("drift")
    if decay_gate(performance.get("auc"), performance.get("validation_auc"), decay_threshold)[0] == RETRAIN:
        causes.append("decay")
    return causes


def _brier_metric() -> tuple[type, type]:
    """Evidently 0.7 has no Brier score: a custom single-value metric (charted by its UI as
    `evidently:metric_v2:BrierScore` without importing this class)."""
    from evidently import Dataset
    from evidently.core.metric_types import SingleValueCalculation, SingleValueMetric

    class BrierScore(SingleValueMetric):
        classification_name: str = "default"

    class BrierScoreCalculation(SingleValueCalculation[BrierScore]):
        def calculate(self, context: Any, current_data: Dataset, reference_data: Dataset | None) -> Any:
            def brier(dataset: Dataset) -> float:
                spec = dataset.data_definition.get_classification(self.metric.classification_name)
                frame = dataset.as_dataframe()
                outcome = (frame[spec.target] == spec.pos_label).astype(float)
                return float(((frame[spec.prediction_probas] - outcome) ** 2).mean())

            reference = None if reference_data is None else self.result(brier(reference_data))
            return self.result(brier(current_data)), reference

        def display_name(self) -> str:
            return "Brier score"

    return BrierScore, BrierScoreCalculation


_BRIER: tuple[type, type] | None = None


def brier_score_metric() -> Any:
    """An instance of the custom Brier metric (its classes are defined once per process: Evidently
    registers metric types by name)."""
    global _BRIER
    if _BRIER is None:
        _BRIER = _brier_metric()
    return _BRIER[0]()


def performance_report(labelled: pd.DataFrame, threshold: float) -> Snapshot:
    """Evidently's ClassificationPreset (quality at the champion's threshold, ROC and PR curves,
    confusion matrix) plus the Brier score, over `user_id`, `churn_label`, `churn_probability`."""
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset

    definition = DataDefinition(
        id_column=ENTITY,
        numerical_columns=[SCORE_COLUMN],
        classification=[BinaryClassification(target=LABEL, prediction_probas=SCORE_COLUMN, pos_label=1)],
    )
    frame = labelled[[ENTITY, LABEL, SCORE_COLUMN]]
    report = Report([ClassificationPreset(probas_threshold=threshold), brier_score_metric()], include_tests=False)
    return report.run(Dataset.from_pandas(frame, data_definition=definition), None)
