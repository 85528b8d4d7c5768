"""The monitoring dashboard: Evidently's own UI over a local workspace under the state dir.

One project, "streamflow churn". Each month adds snapshots timestamped with the month's as_of, so
the UI's panels draw one point per month:

- `drift`: the drift check's own Evidently report (pipelines/drift.py), feature drift and score drift;
- `performance`: realized performance once labels exist (`add_performance_snapshot`, numbers from
  whoever measured them, and `add_classification_snapshot`, Evidently's classification report on
  scores and labels);
- `scores`: the monthly batch scores (scored users, predicted churn rate, pipelines/score.py);
- `campaign`: a retention campaign's outcome once the next drop's labels are in (churn of the
  treatment and control arms among the targeted users, the difference with its interval, revenue
  saved; pipelines/campaigns.py), timestamped with the campaign month's as_of.

A month's snapshot of a kind is replaced when the month is measured again (a re-run, a new
champion), so a panel never shows two points for one month. Numbers computed outside Evidently
become a one-row `MeanValue` report: the mean of one value is that value, and the UI charts it
like any metric (Evidently 0.7 has no "log a scalar" call).

`evidently ui --workspace <state>/evidently` serves it (`make demo` starts it on
STREAMFLOW_EVIDENTLY_PORT, default 8000); a running UI picks up new snapshots without a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.settings import Settings, get_settings

if TYPE_CHECKING:
    import pandas as pd
    from evidently.ui.workspace import Workspace

log = logging.getLogger(__name__)

PROJECT_NAME = "streamflow churn"
PROJECT_DESCRIPTION = (
    "StreamFlow churn model, one point per month: feature drift against the champion's training month, "
    "realized performance once labels arrive, the monthly batch scores, and each retention campaign's "
    "treated vs control churn."
)
DRIFT, PERFORMANCE, SCORES, CAMPAIGN = "drift", "performance", "scores", "campaign"
KINDS = (DRIFT, PERFORMANCE, SCORES, CAMPAIGN)
# What a campaign snapshot carries (a MeanValue each; the panel draws the two churn rates).
CAMPAIGN_VALUES = (
    "treated_churn_rate", "control_churn_rate", "difference", "difference_low", "difference_high", "revenue_saved",
    "control_mean_probability",
)  # fmt: skip


def workspace_dir(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).evidently_workspace


def panel_specs() -> list[dict[str, Any]]:
    """The dashboard's panels (title, plot, the snapshot tag, and per line its legend, metric and
    labels): each panel reads one kind of snapshot, so its lines have no gaps (see the module doc)."""

    def line(legend: str, metric: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"legend": legend, "metric": metric, "labels": labels}

    return [
        {"title": "Drift share", "plot": "line", "tag": DRIFT,
         "values": [line("share of drifted features", "DriftedColumnsCount", {"value_type": "share"})]},
        {"title": "Realized AUC", "plot": "line", "tag": PERFORMANCE,
         "values": [line("AUC on the month's labels", "MeanValue", {"column": "realized_auc"})]},
        {"title": "Predicted churn rate", "plot": "line", "tag": SCORES,
         "values": [line("share at or above the threshold", "MeanValue", {"column": "predicted_churn_rate"})]},
        {"title": "Scored users", "plot": "bar", "tag": SCORES,
         "values": [line("users scored", "MeanValue", {"column": "scored_users"})]},
        {"title": "Campaign: churn treated vs control", "plot": "line", "tag": CAMPAIGN,
         "values": [line("treated (contacted)", "MeanValue", {"column": "treated_churn_rate"}),
                    line("control (held back)", "MeanValue", {"column": "control_churn_rate"})]},
    ]  # fmt: skip


def open_project(directory: Path) -> tuple[Workspace, Any]:
    """The workspace and its one project, created with its panels on first use (idempotent)."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import bar_plot_panel, line_plot_panel
    from evidently.ui.workspace import Workspace

    directory.mkdir(parents=True, exist_ok=True)
    workspace = Workspace(str(directory))
    # search_project matches the exact name in a local workspace.
    found = workspace.search_project(PROJECT_NAME)
    project = found[0] if found else workspace.create_project(PROJECT_NAME, description=PROJECT_DESCRIPTION)
    existing = {panel.title for panel in project.dashboard.model().panels}
    for spec in panel_specs():
        if spec["title"] in existing:
            continue
        make = line_plot_panel if spec["plot"] == "line" else bar_plot_panel
        values = [
            PanelMetric(legend=v["legend"], metric=v["metric"], metric_labels=v["labels"], tags=[spec["tag"]])
            for v in spec["values"]
        ]
        project.dashboard.add_panel(make(title=spec["title"], size="half", values=values))
    return workspace, project


def replace_month_snapshot(directory: Path, snapshot: Any, month: Month, kind: str) -> str:
    """Add a snapshot (an Evidently `Report.run` result tagged `kind`, metadata month) to the
    project, first removing the month's earlier snapshot of that kind; returns its id."""
    workspace, project = open_project(directory)
    for snapshot_id in workspace.list_runs(project.id):
        stored = workspace.get_run(project.id, snapshot_id)
        if stored is not None and stored.metadata.get("month") == month.name and kind in stored.tags:
            workspace.delete_run(project.id, snapshot_id)
    ref = workspace.add_run(project.id, snapshot, include_data=False)
    log.info("dashboard: %s snapshot of %s added (%s)", kind, month, ref.id)
    return str(ref.id)


def scalar_report(values: Mapping[str, float], month: Month, kind: str) -> Any:
    """A one-row `MeanValue` report per value (the mean of one value is that value)."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import MeanValue

    row = pd.DataFrame({name: [float(value)] for name, value in values.items()})
    dataset = Dataset.from_pandas(row, data_definition=DataDefinition(numerical_columns=list(row.columns)))
    return Report([MeanValue(column=name) for name in row.columns], include_tests=False).run(
        dataset, None, timestamp=month.as_of_ts, tags=[kind], metadata={"month": month.name}, name=f"{kind} {month}"
    )


def add_drift_snapshot(month: Month, snapshot: Any, settings: Settings | None = None) -> str:
    """The drift check's Evidently snapshot (run with the month's as_of as timestamp, tag `drift`)."""
    return replace_month_snapshot(workspace_dir(settings), snapshot, month, DRIFT)


def add_performance_snapshot(month: Month, metrics: Mapping[str, float], settings: Settings | None = None) -> str:
    """Realized performance of a month, measured elsewhere (`model_performance`):
    `metrics` like `{"realized_auc": 0.84, "realized_pr_auc": 0.61, "brier": 0.16}`; the
    "Realized AUC" panel reads `realized_auc`."""
    snapshot = scalar_report(metrics, month, PERFORMANCE)
    return replace_month_snapshot(workspace_dir(settings), snapshot, month, PERFORMANCE)


def add_scores_snapshot(
    month: Month, scored_users: int, predicted_churn_rate: float, settings: Settings | None = None
) -> str:
    """The month's batch scores: how many users were scored and the share predicted to churn."""
    values = {"scored_users": float(scored_users), "predicted_churn_rate": float(predicted_churn_rate)}
    snapshot = scalar_report(values, month, SCORES)
    return replace_month_snapshot(workspace_dir(settings), snapshot, month, SCORES)


def add_campaign_snapshot(month: Month, outcome: Mapping[str, Any], settings: Settings | None = None) -> str:
    """A campaign month's outcome (a `campaign_outcomes` row): the treated and control churn rates
    the panel draws, and the difference, its interval, revenue saved and the control's mean score."""
    values = {name: float(outcome[name]) for name in CAMPAIGN_VALUES}
    snapshot = scalar_report(values, month, CAMPAIGN)
    return replace_month_snapshot(workspace_dir(settings), snapshot, month, CAMPAIGN)


def classification_report(scored: pd.DataFrame, threshold: float, month: Month) -> Any:
    """Evidently's classification report (ROC AUC, confusion matrix, PR curve ...) on `scored`
    (user_id, churn_label, churn_probability) plus the AUC as `realized_auc` for the panel."""
    import pandas as pd
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.metrics import MeanValue
    from evidently.presets import ClassificationPreset
    from sklearn.metrics import roc_auc_score

    frame = scored[["user_id", "churn_label", "churn_probability"]].copy()
    frame["churn_predicted"] = (frame["churn_probability"] >= threshold).astype(int)
    # A constant column next to the rows: the panel's realized AUC is read from the same snapshot.
    frame["realized_auc"] = float(roc_auc_score(frame["churn_label"], frame["churn_probability"]))
    definition = DataDefinition(
        id_column="user_id",
        numerical_columns=["churn_probability", "realized_auc"],
        classification=[
            BinaryClassification(
                target="churn_label", prediction_probas="churn_probability", prediction_labels="churn_predicted"
            )
        ],
    )
    return Report([ClassificationPreset(), MeanValue(column="realized_auc")], include_tests=False).run(
        Dataset.from_pandas(pd.DataFrame(frame), data_definition=definition),
        None,
        timestamp=month.as_of_ts,
        tags=[PERFORMANCE],
        metadata={"month": month.name},
        name=f"{PERFORMANCE} {month}",
    )


def add_classification_snapshot(
    month: Month, scored: pd.DataFrame, threshold: float, settings: Settings | None = None
) -> str:
    """Realized performance from scores and labels: Evidently's classification report as the
    month's `performance` snapshot (replacing one added by `add_performance_snapshot`)."""
    snapshot = classification_report(scored, threshold, month)
    return replace_month_snapshot(workspace_dir(settings), snapshot, month, PERFORMANCE)
