"""Real Evidently on generated months: drifted month_001, undrifted later months, the reports it writes."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from streamflow_mlops.config.schema import FEATURE_NAMES, LABEL
from streamflow_mlops.model.training import DEFAULT_CLASSIFIER, build_pipeline, frame_from_tables
from streamflow_mlops.monitoring.drift import (
    DEFAULT_DRIFT_THRESHOLD,
    MIN_SERVED_ROWS,
    RETRAIN,
    SKIP,
    compute_drift,
    drift_gate,
    save_reports,
)
from streamflow_mlops.synthetic.generate import DropSpec, build_drop, default_drift

pytestmark = pytest.mark.slow

SEED = 11


def month_features(month: int, seed: int = SEED) -> tuple[pd.DataFrame, pd.Series]:
    """The month's feature frame in the shape Feast returns it, and its labels."""
    spec = DropSpec(month, seed=seed, drift=default_drift(month))
    tables, _ = build_drop(spec)
    frame = frame_from_tables(tables, spec.as_of)
    return frame.drop(columns=[LABEL]), frame[LABEL]


@pytest.fixture(scope="module")
def labelled_month_000() -> tuple[pd.DataFrame, pd.Series]:
    return month_features(0)


@pytest.fixture(scope="module")
def months(labelled_month_000) -> dict[int, pd.DataFrame]:
    return {0: labelled_month_000[0]} | {m: month_features(m)[0] for m in (1, 2, 3)}


@pytest.fixture(scope="module")
def champion(labelled_month_000):
    """The training DAG's own pipeline fitted on month_000, standing in for the registered champion."""
    frame, labels = labelled_month_000
    return build_pipeline(DEFAULT_CLASSIFIER, seed=42).fit(frame[list(FEATURE_NAMES)], labels)


def scores(pipeline, frame: pd.DataFrame) -> np.ndarray:
    return pipeline.predict_proba(frame[list(FEATURE_NAMES)])[:, 1]


def drift_against_month_000(months, champion, current: pd.DataFrame, served_rows: int):
    reference = months[0]
    return compute_drift(
        reference,
        current,
        reference_scores=scores(champion, reference),
        current_scores=scores(champion, current),
        served_scores=scores(champion, current.iloc[:served_rows]),
    )


@pytest.fixture(scope="module")
def drifted(months, champion):
    return drift_against_month_000(months, champion, months[1], served_rows=500)


@pytest.fixture(scope="module")
def undrifted(months, champion):
    # One served row short of the minimum: served-prediction drift must be left out.
    return drift_against_month_000(months, champion, months[2], served_rows=MIN_SERVED_ROWS - 1)


def test_evidently_columns_are_the_schema_features(drifted):
    assert [c.column for c in drifted.columns] == list(FEATURE_NAMES)


def test_drift_share_agrees_with_the_per_column_verdicts(drifted, undrifted):
    for result in (drifted, undrifted):
        assert result.drift_share == pytest.approx(len(result.drifted_columns) / len(FEATURE_NAMES))


def test_drifted_month_001_triggers_a_retrain(drifted):
    decision, _ = drift_gate(drifted.drift_share, DEFAULT_DRIFT_THRESHOLD, has_champion=True)
    assert decision == RETRAIN
    # The generator's drift: a fee rise, a usage drop and a rebuffering incident.
    assert {"monthly_fee", "watch_hours_30d", "rebuffer_events_7d"} <= set(drifted.drifted_columns)
    assert not {"paperless_billing", "plan_stream_tv", "plan_stream_movies"} & set(drifted.drifted_columns)


def test_undrifted_month_does_not_trigger_a_retrain(undrifted):
    decision, reason = drift_gate(undrifted.drift_share, DEFAULT_DRIFT_THRESHOLD, has_champion=True)
    assert decision == SKIP, reason
    assert undrifted.drift_share < DEFAULT_DRIFT_THRESHOLD / 2


def test_threshold_param_changes_the_decision(months):
    # month_003's users have aged three months since month_000: months_active moves, nothing else.
    aged = compute_drift(months[0], months[3])
    assert aged.drifted_columns == ["months_active"]
    assert drift_gate(aged.drift_share, DEFAULT_DRIFT_THRESHOLD, True)[0] == SKIP
    assert drift_gate(aged.drift_share, 0.05, True)[0] == RETRAIN


def test_threshold_above_month_001_share_skips_it(drifted):
    assert drift_gate(drifted.drift_share, min(1.0, drifted.drift_share + 0.1), True)[0] == SKIP


def test_prediction_drift_follows_the_data(drifted, undrifted):
    moved = drifted.prediction_drift["reference_vs_current"]
    assert moved["drifted"] and moved["current_mean"] > moved["reference_mean"]
    assert not undrifted.prediction_drift["reference_vs_current"]["drifted"]


def test_served_scores_are_compared_only_with_enough_rows(drifted, undrifted):
    served = drifted.prediction_drift["reference_vs_served"]
    assert drifted.prediction_drift["served_rows"] == 500 and served["rows"] == 500
    assert served["drifted"]
    assert undrifted.prediction_drift["served_rows"] == MIN_SERVED_ROWS - 1
    assert undrifted.prediction_drift["reference_vs_served"] is None


def test_no_scores_means_no_prediction_drift(months):
    result = compute_drift(months[0].iloc[:1000], months[2].iloc[:1000])
    assert result.prediction_drift == {"reference_vs_current": None, "reference_vs_served": None, "served_rows": 0}
    assert set(result.snapshots) == {"data"}


class TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)


def test_report_files_exist_and_open_as_html(drifted, tmp_path):
    paths = save_reports(drifted, tmp_path / "reports", "drift_month_001_vs_month_000_v1")
    assert set(paths) == {"data", "served"}
    for path in paths.values():
        text = path.read_text(encoding="utf-8")
        assert text.lstrip().lower().startswith("<!doctype html") or text.lstrip().lower().startswith("<html")
        parser = TagCollector()
        parser.feed(text)
        assert {"html", "head", "body", "script"} <= parser.tags
    assert "monthly_fee" in paths["data"].read_text(encoding="utf-8")
