"""The impact of a promotion, measured before it happens: both models score the challenger's whole
month through Feast, a chunk at a time (model/impact.py says what is reported). Logged on the
challenger's run (`impact/impact.json`, metrics `impact_*`) and shown in the approval request."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY
from streamflow_mlops.config.settings import Settings, get_settings
from streamflow_mlops.model.impact import ImpactTally, impact_metrics
from streamflow_mlops.monitoring.campaigns import DEFAULT_RANK_BY, DEFAULT_TOP_K

if TYPE_CHECKING:
    from streamflow_mlops.model.registry import RegisteredVersion

log = logging.getLogger(__name__)

IMPACT_ARTIFACT = "impact/impact.json"
FEE = "monthly_fee"
# What the decision's result keeps of the report (the user lists stay in the artifact).
SUMMARY_KEYS = ("month", "rank_by", "users", "top_k", "top_k_leaving", "top_k_entering", "spearman",
                "decision_flips", "flips_to_churn", "flips_to_stay", "champion", "challenger")  # fmt: skip


def measure_impact(
    month: Month,
    challenger: Mapping[str, Any],
    champion: RegisteredVersion,
    evaluation: tuple[np.ndarray, np.ndarray, np.ndarray],
    settings: Settings | None = None,
    top_k: int = DEFAULT_TOP_K,
) -> dict[str, Any]:
    """Score the challenger's month (`month`) with both models, log the report on the challenger's run and
    return its summary. `evaluation`: (labels, challenger scores, champion scores) of the
    evaluation rows, for the calibration of both."""
    from streamflow_mlops.features.retrieval import iter_feature_frames
    from streamflow_mlops.model.registry import load_version
    from streamflow_mlops.model.tracking import configure_mlflow
    from streamflow_mlops.model.training import predict_scores

    settings = settings or get_settings()
    client = configure_mlflow(settings)
    challenger_version = load_version(client, challenger["version"])
    old, new = champion.pipeline(), challenger_version.pipeline()
    tally = ImpactTally(top_k, champion.threshold, challenger_version.threshold)
    for frame in iter_feature_frames(month, challenger_version.feature_service, settings):
        weight = frame[FEE].to_numpy(dtype=float) if DEFAULT_RANK_BY == "expected_loss" else np.ones(len(frame))
        tally.add(frame[ENTITY].to_numpy(), predict_scores(old, frame), predict_scores(new, frame), weight)
    labels, challenger_scores, champion_scores = evaluation
    tallied = tally.report(labels, champion_scores, challenger_scores)
    report = {"month": month.name, "rank_by": DEFAULT_RANK_BY, **tallied}
    client.log_dict(challenger["run_id"], report, IMPACT_ARTIFACT)
    for key, value in impact_metrics(report).items():
        client.log_metric(challenger["run_id"], key, float(value))
    log.info(
        "promoting v%s over v%s on %s: %d of the top %d change, Spearman %.4f, %d churn decisions flip",
        challenger["version"], champion.version, month, report["top_k_entering"], top_k, report["spearman"],
        report["decision_flips"],
    )  # fmt: skip
    return {key: report[key] for key in SUMMARY_KEYS}
