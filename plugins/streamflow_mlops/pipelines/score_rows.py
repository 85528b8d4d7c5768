"""What both engines' scoring shares (pipelines/score.py, pipelines/score_spark.py): a chunk's
scores and reasons, the ranking options, the exported list's columns and the month's figures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from streamflow_mlops.config.schema import ENTITY
from streamflow_mlops.model.reasons import reasons_json, top_reason_indices
from streamflow_mlops.monitoring.campaigns import RANK_BY, RANK_COLUMN

if TYPE_CHECKING:
    import pandas as pd

    from streamflow_mlops.model.compiled import PipelineModel

DECILES = 10
FEE = "monthly_fee"
# The exported lists: `rank` is the position by `rank_by` (the order the team works through).
RETENTION_COLUMNS = ("rank", ENTITY, "churn_probability", FEE, "expected_loss", "decile", "reasons")


def score_chunk(model: PipelineModel, frame: pd.DataFrame) -> pd.DataFrame:
    """One row per user of the chunk: user_id, churn_probability, monthly_fee, reasons (JSON). Rows
    are scored independently, so a month scored chunk by chunk has the probabilities of one
    whole-month call. The fee is the FeatureService's point-in-time `monthly_fee` (the one the model
    saw, the subscriptions row at as_of); a FeatureService without it cannot value a churner."""
    import pandas as pd

    frame = frame.reset_index(drop=True)
    if FEE not in frame:
        raise KeyError(f"the features have no {FEE}: expected_loss needs each user's fee")
    probabilities, contributions = model.explain_frame(frame)
    if contributions is None:
        reasons = ["[]"] * len(frame)
    else:
        features = model.explainer.features
        values = {name: frame[name].to_numpy() for name in features}
        reasons = reasons_json(features, values, contributions, top_reason_indices(contributions))
    return pd.DataFrame(
        {
            ENTITY: frame[ENTITY].to_numpy(),
            "churn_probability": probabilities,
            FEE: frame[FEE].to_numpy(dtype=float),
            "reasons": reasons,
        }
    )


def check_rank_by(rank_by: str) -> str:
    if rank_by not in RANK_COLUMN:
        raise ValueError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")
    return rank_by


def summary_figures(row: Sequence[Any]) -> dict[str, float]:
    """The month's figures from its one summary row (count, churn rate, mean, the targeted users'
    lowest probability, treated, control, total expected loss, the top-k's by either ranking)."""
    scored, churn_rate, mean, top_min, treated, control, total, by_probability, by_loss = row
    return {
        "scored_users": int(scored),
        "predicted_churn_rate": float(churn_rate),
        "mean_probability": float(mean),
        "top_k_min_probability": float(top_min),
        "treatment_users": int(treated),
        "control_users": int(control),
        "expected_loss_total": float(total),
        "top_k_expected_loss_by_probability": float(by_probability),
        "top_k_expected_loss_by_expected_loss": float(by_loss),
    }
