"""How a shadow version agrees with the champion on the traffic the service served (pure).

The service logs the shadow's probability beside the champion's on each prediction
(serving/shadow.py, `prediction_log.shadow_version`/`shadow_probability`); the drift check
(pipelines/drift.py) reports these figures for every shadow version the champion was paired with,
so a reviewer sees what the challenger would have answered on real requests, not only on the
held-out month.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Below this many paired predictions a correlation says more about the sample than the models.
MIN_CORRELATION_ROWS = 3


def shadow_agreement(
    champion: np.ndarray, shadow: np.ndarray, champion_threshold: float, shadow_threshold: float
) -> dict[str, Any]:
    """Rows, mean and largest absolute difference of the probabilities, mean shift (shadow minus
    champion), the share of rows where both models take the same churn decision (each at its own
    threshold), each model's churn rate, and Pearson's correlation (None when undefined: too few
    rows, or a constant score)."""
    champion = np.asarray(champion, dtype=float)
    shadow = np.asarray(shadow, dtype=float)
    if champion.shape != shadow.shape:
        raise ValueError(f"{champion.shape[0]} champion scores against {shadow.shape[0]} shadow scores")
    rows = int(champion.shape[0])
    if rows == 0:
        return {
            "rows": 0,
            "mean_abs_difference": None,
            "max_abs_difference": None,
            "mean_difference": None,
            "decision_agreement": None,
            "champion_churn_rate": None,
            "shadow_churn_rate": None,
            "correlation": None,
        }
    difference = shadow - champion
    champion_churn = champion >= champion_threshold
    shadow_churn = shadow >= shadow_threshold
    correlation = None
    if rows >= MIN_CORRELATION_ROWS and champion.std() > 0 and shadow.std() > 0:
        correlation = float(np.corrcoef(champion, shadow)[0, 1])
    return {
        "rows": rows,
        "mean_abs_difference": float(np.abs(difference).mean()),
        "max_abs_difference": float(np.abs(difference).max()),
        "mean_difference": float(difference.mean()),
        "decision_agreement": float((champion_churn == shadow_churn).mean()),
        "champion_churn_rate": float(champion_churn.mean()),
        "shadow_churn_rate": float(shadow_churn.mean()),
        "correlation": correlation,
    }
