"""The Evidently dashboard through the UI's own HTTP API: project, panels, one point per month.

Why the API and not a headless Chromium: the UI's charts are drawn from exactly these calls
(`/api/v2/dashboards/{project}` for the panels, `data_series_batch` for each panel's points; the
browser makes the same requests), so checking them checks what the page shows, deterministically
and in-process (no port, no browser download, no apt package, no animation timing). What a browser
adds is the JavaScript rendering of Evidently's own bundle, which is Evidently's to test; the
README's screenshot (docs/dashboard.png) was taken with headless Chromium from a real run.
"""

from __future__ import annotations

import functools

import pandas as pd
import pytest

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import FEATURE_NAMES
from streamflow_mlops.config.settings import get_settings
from streamflow_mlops.monitoring.dashboard import (
    CAMPAIGN_VALUES,
    PROJECT_NAME,
    add_campaign_snapshot,
    add_classification_snapshot,
    add_drift_snapshot,
    add_performance_snapshot,
    add_scores_snapshot,
    panel_specs,
    workspace_dir,
)

pytestmark = pytest.mark.slow

MONTHS = (0, 1, 2)
USERS = 1200


@functools.cache
def month_frame(month: int) -> pd.DataFrame:
    from streamflow_mlops.model.training import frame_from_tables
    from streamflow_mlops.synthetic.generate import DropSpec, build_drop, default_drift

    spec = DropSpec(month, users=USERS, seed=5, drift=default_drift(month))
    return frame_from_tables(build_drop(spec)[0], spec.as_of)


def fill_workspace(settings) -> dict[str, list[float]]:
    """Three months as the DAGs add them: drift, scores, realized performance; returns the
    values each panel must show, in month order."""
    from streamflow_mlops.model.training import train_model
    from streamflow_mlops.monitoring.drift import compute_drift

    trained = train_model(month_frame(0), seed=1)
    columns = list(FEATURE_NAMES)
    expected: dict[str, list[list[float]]] = {spec["title"]: [[] for _ in spec["values"]] for spec in panel_specs()}
    for month in MONTHS:
        name, frame = Month(month), month_frame(month)
        drift = compute_drift(month_frame(0), frame, month=name)
        add_drift_snapshot(name, drift.snapshots["data"], settings)
        probabilities = trained.pipeline.predict_proba(frame[columns])[:, 1]
        rate = float((probabilities >= trained.threshold).mean())
        # A first, wrong count, replaced as a re-run of the month would: the panel keeps one point.
        add_scores_snapshot(name, 1, 0.0, settings)
        add_scores_snapshot(name, len(frame), rate, settings)
        scored = frame[["user_id", "churn_label"]].assign(churn_probability=probabilities)
        add_classification_snapshot(name, scored, trained.threshold, settings)
        expected["Drift share"][0].append(drift.drift_share)
        expected["Predicted churn rate"][0].append(rate)
        expected["Scored users"][0].append(float(len(frame)))
        from sklearn.metrics import roc_auc_score

        expected["Realized AUC"][0].append(float(roc_auc_score(scored["churn_label"], probabilities)))
        # A campaign outcome (issue 28), first a wrong one that a re-measure replaces.
        outcome = {name: 0.01 * month for name in CAMPAIGN_VALUES}
        add_campaign_snapshot(name, outcome | {"treated_churn_rate": 1.0}, settings)
        outcome |= {"treated_churn_rate": 0.5 - 0.1 * month, "control_churn_rate": 0.6 - 0.05 * month}
        add_campaign_snapshot(name, outcome, settings)
        expected["Campaign: churn treated vs control"][0].append(outcome["treated_churn_rate"])
        expected["Campaign: churn treated vs control"][1].append(outcome["control_churn_rate"])
    # Realized performance measured elsewhere (issue 17) replaces the month's classification report.
    add_performance_snapshot(Month(2), {"realized_auc": 0.5}, settings)
    expected["Realized AUC"][0][-1] = 0.5
    return expected


def test_dashboard_has_its_panels_with_one_point_per_month(monkeypatch, tmp_path):
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    monkeypatch.setenv("STREAMFLOW_HOME", str(tmp_path / "state"))
    get_settings.cache_clear()
    settings = get_settings()
    expected = fill_workspace(settings)

    from evidently.ui.service.app import create_app, get_config
    from litestar.testing import TestClient

    app = create_app(get_config(host="127.0.0.1", port=0, workspace=str(workspace_dir(settings))))
    with TestClient(app) as client:
        projects = client.get("/api/projects").json()
        assert [p["name"] for p in projects] == [PROJECT_NAME]
        project = projects[0]["id"]
        snapshots = client.get(f"/api/projects/{project}/snapshots").json()
        assert len(snapshots) == 4 * len(MONTHS)
        dashboard = client.get(f"/api/v2/dashboards/{project}").json()
        assert [p["title"] for p in dashboard["panels"]] == [spec["title"] for spec in panel_specs()]
        for panel in dashboard["panels"]:
            body = {
                "series_filter": [
                    {key: value[key] for key in ("tags", "metadata", "metric", "metric_labels")}
                    for value in panel["values"]
                ]
            }
            answer = client.post(f"/api/v2/snapshots/{project}/data_series_batch", json=body)
            assert answer.status_code == 201, answer.text
            data = answer.json()
            days = [source["timestamp"][:10] for source in data["sources"]]
            assert days == [Month(m).as_of.isoformat() for m in MONTHS], panel["title"]
            assert len(data["series"]) == len(expected[panel["title"]]), panel["title"]
            for series, values in zip(data["series"], expected[panel["title"]], strict=True):
                assert series["values"] == pytest.approx(values, abs=1e-9), panel["title"]
    get_settings.cache_clear()
