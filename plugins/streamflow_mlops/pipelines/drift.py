"""What the drift DAG calls: Evidently drift of a month against the champion's training month and of served
predictions, the report kept, the gate decided."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import FEATURE_NAMES
from streamflow_mlops.config.settings import REGISTERED_MODEL, WAREHOUSE_SCHEMA, Settings, get_settings
from streamflow_mlops.model.promotion import month_older_than_champion
from streamflow_mlops.model.tracking import ensure_experiment
from streamflow_mlops.monitoring.drift import (
    DEFAULT_DRIFT_THRESHOLD,
    MAX_SERVED_ROWS,
    MONITORING_EXPERIMENT,
    SKIP,
    DriftResult,
    compute_drift,
    save_reports,
)
from streamflow_mlops.monitoring.performance import (
    DEFAULT_DECAY_THRESHOLD,
    drift_check_decision,
    retrain_causes,
)
from streamflow_mlops.pipelines.performance import (
    measure_realized_performance,
    performance_artifacts,
    performance_metrics,
)

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from streamflow_mlops.model.registry import RegisteredVersion


def drift_reference(settings: Settings) -> RegisteredVersion | None:
    """The champion, whose training month is the reference, or None when there is none."""
    from streamflow_mlops.model.registry import load_champion
    from streamflow_mlops.model.tracking import configure_mlflow

    champion = load_champion(configure_mlflow(settings))
    if champion is not None and champion.month is None:
        raise ValueError(f"{REGISTERED_MODEL} v{champion.version} (champion) has no `month` tag")
    return champion


def sampled_feature_frame(month: Month, feature_service: str, settings: Settings) -> pd.DataFrame:
    """The month's features for Evidently: every user up to `drift_sample_rows` users, beyond that
    the md5 sample of about that many (the same users every month; README "Scale" shows the drift
    shares and the gate's decision are those of the whole month within noise)."""
    import pandas as pd

    from streamflow_mlops.features.retrieval import iter_feature_frames

    frames = list(iter_feature_frames(month, feature_service, settings, sample_rows=settings.drift_sample_rows))
    if not frames:
        raise LookupError(f"{month}: no users in the feature store")
    return pd.concat(frames, ignore_index=True)


def served_scores(db_url: str, model_version: str) -> np.ndarray:
    """Probabilities the service returned with this champion version (newest first, capped)."""
    import numpy as np
    import psycopg

    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            f"SELECT churn_probability FROM {WAREHOUSE_SCHEMA}.prediction_log "
            "WHERE model_name = %s AND model_version = %s ORDER BY predicted_at DESC LIMIT %s",
            (REGISTERED_MODEL, model_version, MAX_SERVED_ROWS),
        ).fetchall()
    return np.array([r[0] for r in rows], dtype=float)


def served_shadow_scores(db_url: str, champion_version: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(champion, shadow) probabilities of the predictions this champion served with a shadow
    beside it, by shadow version (the newest MAX_SERVED_ROWS of them)."""
    import numpy as np
    import psycopg

    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            f"SELECT shadow_version, churn_probability, shadow_probability FROM {WAREHOUSE_SCHEMA}.prediction_log "
            "WHERE model_name = %s AND model_version = %s AND shadow_version IS NOT NULL "
            "AND shadow_probability IS NOT NULL ORDER BY predicted_at DESC LIMIT %s",
            (REGISTERED_MODEL, champion_version, MAX_SERVED_ROWS),
        ).fetchall()
    pairs: dict[str, tuple[list[float], list[float]]] = {}
    for version, champion, shadow in rows:
        scores = pairs.setdefault(version, ([], []))
        scores[0].append(champion)
        scores[1].append(shadow)
    return {v: (np.array(c, dtype=float), np.array(s, dtype=float)) for v, (c, s) in sorted(pairs.items())}


def measure_shadow_agreement(settings: Settings, champion: RegisteredVersion) -> list[dict[str, Any]]:
    """How each shadow version agreed with the champion on served traffic (monitoring/shadow_agreement.py),
    each model's churn decision taken at its own threshold (the `threshold` tag of its version)."""
    from streamflow_mlops.model.registry import load_version, mlflow_client
    from streamflow_mlops.monitoring.shadow_agreement import shadow_agreement

    pairs = served_shadow_scores(settings.db_url, champion.version)
    if not pairs:
        return []
    client = mlflow_client(settings.mlflow_tracking_uri)
    return [
        {"champion_version": champion.version, "shadow_version": version}
        | shadow_agreement(champion_scores, shadow, champion.threshold, load_version(client, version).threshold)
        for version, (champion_scores, shadow) in pairs.items()
    ]


def record_drift_report(db_url: str, row: dict[str, Any]) -> None:
    import psycopg

    with psycopg.connect(db_url) as conn:
        conn.execute(
            f"INSERT INTO {WAREHOUSE_SCHEMA}.drift_reports (month, reference_month, drift_share, drifted_columns, "
            "prediction_drift, decision, reason, report_path) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                row["month"],
                row["reference_month"],
                row["drift_share"],
                json.dumps(row["drifted_columns"]),
                json.dumps(row["prediction_drift"]),
                row["decision"],
                row["reason"],
                row["report_path"],
            ),
        )


def log_monitoring_run(settings: Settings, result: dict[str, Any], threshold: float, reports: Sequence[Path]) -> str:
    """One MLflow run per check in `streamflow_monitoring`: params, drift and realized-performance
    metrics, the HTML reports."""
    from mlflow import MlflowClient

    uri = settings.mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.create_run(
        ensure_experiment(client, settings, MONITORING_EXPERIMENT),
        run_name=f"drift {result['month']}",
        tags={"month": result["month"], "decision": result["decision"], "reason": result["reason"]},
    )
    run_id = run.info.run_id
    client.log_param(run_id, "month", result["month"])
    client.log_param(run_id, "reference_month", result["reference_month"] or "")
    client.log_param(run_id, "drift_threshold", threshold)
    if result["drift_share"] is not None:
        client.log_metric(run_id, "drift_share", result["drift_share"])
        client.log_metric(run_id, "drifted_columns", len(result["drifted_columns"]))
    for key, summary in result["prediction_drift"].items():
        if isinstance(summary, dict):
            client.log_metric(run_id, f"prediction_drift_{key}", summary["score"])
    for agreement in result.get("shadow_agreement", []):
        for key, value in agreement.items():
            if key not in ("champion_version", "shadow_version") and value is not None:
                client.log_metric(run_id, f"shadow_v{agreement['shadow_version']}_{key}", value)
    for path in reports:
        client.log_artifact(run_id, str(path), artifact_path="drift_reports")
    performance = result.get("performance", {})
    for key, value in performance_metrics(performance).items():
        client.log_metric(run_id, key, value)
    for path in performance_artifacts(performance):
        client.log_artifact(run_id, str(path), artifact_path="performance_reports")
    client.set_terminated(run_id)
    return run_id


@dataclass(frozen=True)
class DriftMeasurement:
    """The month's drift against the champion's training month, and where its reports were kept."""

    drift: DriftResult
    reports: dict[str, Path]


def measure_drift(month: Month, champion: RegisteredVersion, settings: Settings) -> DriftMeasurement:
    """Evidently drift of the month's features and the champion's scores (on both months and as
    served) against its training month, the reports saved."""
    from streamflow_mlops.model.training import predict_scores

    reference = sampled_feature_frame(champion.month, champion.feature_service, settings)
    current = sampled_feature_frame(month, champion.feature_service, settings)
    pipeline = champion.pipeline()
    drift = compute_drift(
        reference,
        current,
        reference_scores=predict_scores(pipeline, reference),
        current_scores=predict_scores(pipeline, current),
        served_scores=served_scores(settings.db_url, champion.version),
        feature_names=[c for c in reference.columns if c in FEATURE_NAMES],
        month=month,
    )
    stem = f"drift_{month}_vs_{champion.month}_v{champion.version}"
    return DriftMeasurement(drift, save_reports(drift, settings.reports_dir / "drift", stem))


def unmeasured_result(month: Month, champion: RegisteredVersion | None) -> dict[str, Any]:
    """The check's result before anything is measured."""
    return {
        "month": month.name,
        "reference_month": champion.month.name if champion is not None else None,
        "drift_share": None,
        "drifted_columns": [],
        "prediction_drift": {},
        "shadow_agreement": [],
        "report_path": None,
    }


def drift_fields(
    champion: RegisteredVersion, measured: DriftMeasurement, agreement: list[dict[str, Any]]
) -> dict[str, Any]:
    """What a measured drift adds to the result."""
    drift = measured.drift
    return {
        "drift_share": drift.drift_share,
        "drifted_columns": drift.drifted_columns,
        "prediction_drift": {"champion_version": champion.version, **drift.prediction_drift},
        "shadow_agreement": agreement,
        "report_path": str(measured.reports["data"]),
    }


def report_files(measured: DriftMeasurement | None) -> list[Path]:
    return [] if measured is None else list(measured.reports.values())


def add_dashboard_snapshots(
    month: Month, measured: DriftMeasurement, performance: dict[str, Any], settings: Settings
) -> str:
    """The month's drift (and its realized performance, when measured) on the Evidently dashboard."""
    from streamflow_mlops.monitoring.dashboard import add_drift_snapshot, add_performance_snapshot

    snapshot = add_drift_snapshot(month, measured.drift.snapshots["data"], settings)
    if performance.get("status") == "measured":
        realized = {"realized_auc": performance["auc"], "realized_pr_auc": performance["pr_auc"]}
        add_performance_snapshot(month, realized | {"brier": performance["brier"]}, settings)
    return snapshot


def run_drift_check(
    month: str | Month,
    threshold: float = DEFAULT_DRIFT_THRESHOLD,
    settings: Settings | None = None,
    decay_threshold: float = DEFAULT_DECAY_THRESHOLD,
) -> dict:
    """Compare `month` with the champion's training month, measure the champion's realized
    performance on the month's labels, decide (drift or decay retrains), keep the reports; returns
    the decision as a JSON-able dict (month, reference_month, drift_share, drifted_columns,
    prediction_drift, shadow_agreement, performance, decision, reason, report_path, mlflow_run_id).
    `shadow_agreement`: one entry per version the service scored in shadow beside the champion.
    The champion's pipeline is loaded once, for both the drift and the realized performance."""
    settings = settings or get_settings()
    month = Month.parse(month)
    champion = drift_reference(settings)
    result = unmeasured_result(month, champion)
    stale = month_older_than_champion(month, champion.month if champion else None)
    if stale is not None:
        # An older month re-delivered or re-run: never a reason to retrain (nor a report to keep).
        result.update(decision=SKIP, reason=stale)
        result["mlflow_run_id"] = log_monitoring_run(settings, result, threshold, [])
        record_drift_report(settings.db_url, result)
        log.info("%s: %s", month, stale)
        return result
    measured = None
    if champion is not None:
        measured = measure_drift(month, champion, settings)
        result.update(drift_fields(champion, measured, measure_shadow_agreement(settings, champion)))
        for agreement in result["shadow_agreement"]:
            log.info("served traffic, champion vs shadow: %s", agreement)
    # Realized performance on labels the champion never saw; decay retrains like drift.
    performance = measure_realized_performance(month, champion, settings)
    decision, reason = drift_check_decision(
        result["drift_share"], threshold, performance, decay_threshold, has_champion=champion is not None
    )
    causes = retrain_causes(result["drift_share"], threshold, performance, decay_threshold)
    result.update(decision=decision, reason=reason, performance=performance, causes=causes)
    result.update(drift_threshold=threshold, decay_threshold=decay_threshold)
    result["mlflow_run_id"] = log_monitoring_run(settings, result, threshold, report_files(measured))
    if measured is not None:
        result["dashboard_snapshot"] = add_dashboard_snapshots(month, measured, performance, settings)
    record_drift_report(settings.db_url, result)
    log.info(
        "%s vs %s: drift share %s, drifted %s -> %s (%s)",
        month, result["reference_month"], result["drift_share"], result["drifted_columns"], decision, reason,
    )  # fmt: skip
    return result
