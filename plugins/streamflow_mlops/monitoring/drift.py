"""Drift of a new month against the champion's training month, and the retrain gate.

`drift_gate` is the decision (pure). `compute_drift` runs Evidently on two feature frames and the
champion's scores (no I/O). `run_drift_check` is the edge: it finds the champion in MLflow, reads
both months through Feast, scores them, keeps the HTML report (state dir and MLflow monitoring
run) and records a `drift_reports` row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY, FEATURE_NAMES, feature_column

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from evidently import DataDefinition
    from evidently.core.report import Snapshot

log = logging.getLogger(__name__)

# Chosen from measurements on the generator (see the streamflow_drift DAG docs and
# bench/bench_drift.py): undrifted months drift at most 1 of 14 columns (0.07), the drifted
# month_001 drifts 7 of 14 (0.50); 0.3 (at least 5 columns) sits in the middle of that gap.
DEFAULT_DRIFT_THRESHOLD = 0.3
MONITORING_EXPERIMENT = "streamflow_monitoring"
SCORE_COLUMN = "churn_probability"
# Below this many served predictions a distribution test says more about the sample than about
# the traffic, so served-prediction drift is reported as not measured.
MIN_SERVED_ROWS = 30
# The newest served predictions of the champion are enough to describe its traffic; the cap keeps
# the query and the test bounded however long the service has been running.
MAX_SERVED_ROWS = 100_000

RETRAIN = "retrain"
SKIP = "skip"


def drift_gate(drift_share: float | None, threshold: float, has_champion: bool) -> tuple[str, str]:
    """`("retrain" | "skip", reason)`: no champion retrains (first training), else the share decides."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"drift_threshold must be within [0, 1], got {threshold}")
    if not has_champion:
        return RETRAIN, "no champion yet: first training"
    if drift_share is None:
        raise ValueError("a champion exists but no drift share was measured")
    if drift_share >= threshold:
        return RETRAIN, f"drift share {drift_share:.3f} >= threshold {threshold:.3f}"
    return SKIP, f"drift share {drift_share:.3f} < threshold {threshold:.3f}"


def data_definition(feature_names: Sequence[str] = FEATURE_NAMES, extra_numeric: Sequence[str] = ()) -> DataDefinition:
    """Evidently's column mapping, typed from the schema's declarations."""
    from evidently import DataDefinition

    return DataDefinition(
        id_column=ENTITY,
        numerical_columns=[n for n in feature_names if not feature_column(n).categorical] + list(extra_numeric),
        categorical_columns=[n for n in feature_names if feature_column(n).categorical],
    )


@dataclass
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass
class DriftResult:
    """What Evidently found: the data drift share over the feature columns, and score drift."""

    drift_share: float
    columns: list[ColumnDrift]
    prediction_drift: dict[str, Any]
    snapshots: dict[str, Snapshot] = field(repr=False)

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]


def _column_drifts(snapshot: Snapshot) -> dict[str, ColumnDrift]:
    """Per-column drift from the snapshot's ValueDrift tests (FAIL = drift), which already know
    whether the method's score is a distance (drift above) or a p-value (drift below)."""
    content = snapshot.dict()
    scores = {m["config"]["column"]: m for m in content["metrics"] if m["config"].get("column")}
    out = {}
    for test in content["tests"]:
        params = test["metric_config"]["params"]
        if test["id"] != "drift" or "column" not in params:
            continue
        name = params["column"]
        out[name] = ColumnDrift(
            column=name,
            method=params["method"],
            score=float(scores[name]["value"]),
            threshold=float(params["threshold"]),
            drifted=test["status"] == "FAIL",
        )
    return out


def _score_summary(drift: ColumnDrift, reference: np.ndarray, current: np.ndarray) -> dict[str, Any]:
    return {
        "method": drift.method,
        "score": drift.score,
        "threshold": drift.threshold,
        "drifted": drift.drifted,
        "reference_mean": float(reference.mean()),
        "current_mean": float(current.mean()),
        "rows": int(len(current)),
    }


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    reference_scores: np.ndarray | None = None,
    current_scores: np.ndarray | None = None,
    served_scores: np.ndarray | None = None,
    feature_names: Sequence[str] = FEATURE_NAMES,
    month: Month | None = None,
) -> DriftResult:
    """Evidently `DataDriftPreset` over the feature columns (current first, as Evidently takes it),
    plus the drift of the champion's scores: reference vs current month, and reference vs served.
    `month` stamps the data snapshot for the dashboard (monitoring/dashboard.py): its as_of, its name."""
    import numpy as np
    from evidently import Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    names = list(feature_names)
    with_scores = reference_scores is not None and current_scores is not None
    extra = [SCORE_COLUMN] if with_scores else []
    definition = data_definition(names, extra)
    ref = reference[[ENTITY, *names]].copy()
    cur = current[[ENTITY, *names]].copy()
    metrics: list[Any] = [DataDriftPreset(columns=names)]
    if with_scores:
        ref[SCORE_COLUMN] = np.asarray(reference_scores, dtype=float)
        cur[SCORE_COLUMN] = np.asarray(current_scores, dtype=float)
        metrics.append(ValueDrift(column=SCORE_COLUMN))
    stamp: dict[str, Any] = {"tags": ["drift"], "metadata": {}}
    if month is not None:
        stamp.update(metadata={"month": month.name}, timestamp=month.as_of_ts)
    snapshot = Report(metrics, include_tests=True).run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
        **stamp,
    )
    drifts = _column_drifts(snapshot)
    share = next(m["value"]["share"] for m in snapshot.dict()["metrics"] if "DriftedColumnsCount" in m["metric_name"])
    snapshots = {"data": snapshot}
    prediction: dict[str, Any] = {"reference_vs_current": None, "reference_vs_served": None, "served_rows": 0}
    if with_scores:
        prediction["reference_vs_current"] = _score_summary(
            drifts.pop(SCORE_COLUMN), ref[SCORE_COLUMN].to_numpy(), cur[SCORE_COLUMN].to_numpy()
        )
        served = np.asarray(served_scores if served_scores is not None else [], dtype=float)
        prediction["served_rows"] = int(len(served))
        if len(served) >= MIN_SERVED_ROWS:
            score_definition = data_definition([], [SCORE_COLUMN])
            served_frame = _scores_frame(served)
            served_snapshot = Report([ValueDrift(column=SCORE_COLUMN)], include_tests=True).run(
                Dataset.from_pandas(served_frame, data_definition=score_definition),
                Dataset.from_pandas(ref[[ENTITY, SCORE_COLUMN]], data_definition=score_definition),
            )
            snapshots["served"] = served_snapshot
            prediction["reference_vs_served"] = _score_summary(
                _column_drifts(served_snapshot)[SCORE_COLUMN], ref[SCORE_COLUMN].to_numpy(), served
            )
    return DriftResult(
        drift_share=float(share),
        columns=[drifts[n] for n in names],
        prediction_drift=prediction,
        snapshots=snapshots,
    )


def _scores_frame(scores: np.ndarray) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({ENTITY: [f"served-{i}" for i in range(len(scores))], SCORE_COLUMN: scores})


def save_reports(result: DriftResult, directory: Path, stem: str) -> dict[str, Path]:
    """Write each snapshot as a standalone HTML file `<stem>.html` / `<stem>_served.html`."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, snapshot in result.snapshots.items():
        path = directory / (f"{stem}.html" if kind == "data" else f"{stem}_{kind}.html")
        snapshot.save_html(str(path))
        paths[kind] = path
    return paths
