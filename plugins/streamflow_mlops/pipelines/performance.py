"""Realized performance of the champion on a month's labels it never trained on (called by the drift check).

With the default layout a month's labels are the outcomes of the period that starts at its
as_of, so a champion trained on an earlier month meets them for the first time: its scores on
those rows (features point-in-time at the labels' as_of, through the FeatureService) against the
labels are its realized performance. A champion trained on the same labels is not scored (that
would be its training set). The users the previous month's retention campaign treated are left
out: the campaign may have changed their outcome, which is not the model's error; the
control arm and every untargeted user stay (pipelines/campaigns.py says which campaign a drop's
labels answer). Each evaluation is one `model_performance` row, keyed by (month, model version),
an Evidently classification report and a reliability table next to the drift report, and metrics
on the drift check's MLflow monitoring run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY, LABEL
from streamflow_mlops.config.settings import REGISTERED_MODEL, WAREHOUSE_SCHEMA, Settings
from streamflow_mlops.monitoring.drift import SCORE_COLUMN
from streamflow_mlops.monitoring.performance import performance_report, realized_metrics, reliability_table

if TYPE_CHECKING:
    from streamflow_mlops.model.registry import RegisteredVersion

log = logging.getLogger(__name__)

PERFORMANCE_COLUMNS = (
    "month", "as_of", "model_name", "model_version", "trained_month", "rows", "positives", "auc", "pr_auc",
    "lift_at_10", "brier", "mean_score", "churn_rate", "validation_auc", "treated_excluded", "report_path",
    "evaluated_at",
)  # fmt: skip
# What the monitoring run logs as metrics (prefixed `realized_`).
LOGGED_METRICS = ("auc", "pr_auc", "lift_at_10", "brier", "rows")


def record_performance(db_url: str, row: dict[str, Any]) -> None:
    """Upsert the (month, model version) row: a re-run replaces it, never adds a second."""
    import psycopg

    columns = [c for c in PERFORMANCE_COLUMNS if c != "evaluated_at"]
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in ("month", "model_version"))
    with psycopg.connect(db_url) as conn:
        conn.execute(
            f"INSERT INTO {WAREHOUSE_SCHEMA}.model_performance ({', '.join(columns)}) "
            f"VALUES ({', '.join(['%s'] * len(columns))}) "
            f"ON CONFLICT (month, model_version) DO UPDATE SET {updates}, evaluated_at = now()",
            [row[c] for c in columns],
        )


def realized_performance(db_url: str, month: str | None = None) -> list[dict[str, Any]]:
    """Every `model_performance` row (of one month when given), oldest month first: what a
    dashboard or a report reads (`add_performance_snapshot(Month.parse(row["month"]), row)`)."""
    import psycopg
    from psycopg.rows import dict_row

    where, args = ("WHERE month = %s", (month,)) if month else ("", ())
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        return conn.execute(
            f"SELECT {', '.join(PERFORMANCE_COLUMNS)} FROM {WAREHOUSE_SCHEMA}.model_performance {where} "
            "ORDER BY month, model_version::int",
            args,
        ).fetchall()


def save_performance_report(
    labelled: Any, threshold: float, reliability: list[dict], directory: Path, stem: str
) -> dict:
    """Evidently's classification report as `<stem>.html`, the reliability table as
    `<stem>_reliability.json`."""
    directory.mkdir(parents=True, exist_ok=True)
    html = directory / f"{stem}.html"
    performance_report(labelled, threshold).save_html(str(html))
    table = directory / f"{stem}_reliability.json"
    table.write_text(json.dumps(reliability, indent=1) + "\n")
    return {"report": html, "reliability": table}


@dataclass
class LabelledScores:
    """A model's scores on every labelled row of a month, and the rows of a seeded sample."""

    labels: np.ndarray
    scores: np.ndarray
    sample: pd.DataFrame
    excluded: int = 0


def score_labelled_rows(
    month: Month, pipeline: Any, feature_service: str, settings: Settings, exclude: frozenset[str] = frozenset()
) -> LabelledScores:
    """Score `pipeline` on the month's labelled rows a chunk at a time. Every label and score is
    kept (9 bytes a row: the metrics use them all); Evidently's report, which would hold the
    month several times over, gets the user_id, label and score of a seeded sample of
    `drift_sample_rows` rows. Rows of the users in `exclude` are left out (and counted). Raises
    ValueError when the month has no labels."""
    from streamflow_mlops.features.retrieval import iter_training_set
    from streamflow_mlops.model.sampling import HashSample
    from streamflow_mlops.model.training import predict_scores

    labels, scores = [], []
    excluded = 0
    sample = HashSample(seed=0, max_rows=settings.drift_sample_rows)
    for chunk in iter_training_set(month, feature_service, settings):
        if exclude:
            kept = ~chunk[ENTITY].isin(exclude)
            excluded += int((~kept).sum())
            chunk = chunk[kept]
        chunk_scores = predict_scores(pipeline, chunk)
        labels.append(chunk[LABEL].to_numpy())
        scores.append(chunk_scores)
        sample.add(chunk[[ENTITY, LABEL]].assign(**{SCORE_COLUMN: chunk_scores}))
    return LabelledScores(np.concatenate(labels), np.concatenate(scores), sample.frame(), excluded)


def measure_realized_performance(
    month: Month, champion: RegisteredVersion | None, settings: Settings
) -> dict[str, Any]:
    """Score the champion on the month's labelled rows when it did not train on them, record and
    report it; returns `{"status": "measured" | "skipped", "reason", ...metrics}` (JSON-able)."""
    if champion is None:
        return {"status": "skipped", "reason": "no champion yet"}
    from streamflow_mlops.features.retrieval import labels_as_of as month_labels_as_of
    from streamflow_mlops.pipelines.campaigns import campaign_for_labels, treated_users

    trained_as_of = trained_labels_as_of(champion)
    labels_as_of = month_labels_as_of(month, settings).date()
    if labels_as_of <= trained_as_of:
        reason = (
            f"champion v{champion.version} trained on labels as_of {trained_as_of}; "
            f"{month}'s labels (as_of {labels_as_of}) are not later"
        )
        return {"status": "skipped", "reason": reason}
    pipeline = champion.pipeline()
    treated = treated_users(settings.db_url, campaign_for_labels(settings.db_url, labels_as_of))
    try:
        labelled = score_labelled_rows(month, pipeline, champion.feature_service, settings, exclude=treated)
    except ValueError as error:
        return {"status": "skipped", "reason": f"no labels to evaluate: {error}"}
    labels, scores = labelled.labels, labelled.scores
    metrics = realized_metrics(labels, scores)
    stem = f"performance_{month}_v{champion.version}"
    paths = save_performance_report(
        labelled.sample, champion.threshold, reliability_table(labels, scores),
        settings.reports_dir / "performance", stem,
    )  # fmt: skip
    row = {
        "month": month.name,
        "as_of": labels_as_of,
        "model_name": REGISTERED_MODEL,
        "model_version": champion.version,
        "trained_month": champion.month.name if champion.month is not None else None,
        **metrics,
        "validation_auc": champion.val_auc,
        "treated_excluded": labelled.excluded,
        "report_path": str(paths["report"]),
    }
    record_performance(settings.db_url, row)
    log.info(
        "champion v%s (trained %s) on %s: realized AUC %.4f (validation %s) on %d rows",
        champion.version, row["trained_month"], month, metrics["auc"], champion.val_auc, metrics["rows"],
    )  # fmt: skip
    return {
        "status": "measured",
        "reason": f"{metrics['rows']} labelled rows as_of {labels_as_of}, unseen by v{champion.version}"
        + (f" ({labelled.excluded} users treated by a campaign left out)" if labelled.excluded else ""),
        **row,
        "as_of": labels_as_of.isoformat(),
        "reliability_path": str(paths["reliability"]),
    }


def trained_labels_as_of(champion: RegisteredVersion) -> date:
    """The as_of of the labels the champion trained on; a version with neither tag can't be judged on later labels."""
    if champion.labels_as_of is None:
        raise KeyError(f"{REGISTERED_MODEL} v{champion.version} has neither a `labels_as_of` nor an `as_of` tag")
    return champion.labels_as_of


def performance_artifacts(performance: dict[str, Any]) -> list[Path]:
    """The files of a measured performance, for the monitoring run."""
    if performance.get("status") != "measured":
        return []
    return [Path(performance["report_path"]), Path(performance["reliability_path"])]


def performance_metrics(performance: dict[str, Any]) -> dict[str, float]:
    """`realized_*` metrics of a measured performance, for the monitoring run."""
    if performance.get("status") != "measured":
        return {}
    return {f"realized_{name}": float(performance[name]) for name in LOGGED_METRICS}
