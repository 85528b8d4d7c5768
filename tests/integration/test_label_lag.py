"""Label lag (DESIGN "Data"): month M's drop labels the period after month M-1's as_of.

Real ingestion (GE validation, manifest, COPY load), real Feast point-in-time join, real MLflow.
"""

from __future__ import annotations

import json
from datetime import date

import pandas as pd
import psycopg
import pytest

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY, LABEL, TIMESTAMP
from streamflow_mlops.data.ingest import load_month, read_labels_as_of, validate_month
from streamflow_mlops.synthetic.generate import DropSpec, build_drop, default_drift, write_drop

USERS = 800
SEED = 5


def lagged(month: int) -> DropSpec:
    spec = DropSpec(month, users=USERS, seed=SEED, drift=default_drift(month), label_lag=1)
    return DropSpec(**{**spec.__dict__, "labelled_drift": default_drift(spec.labelled_month)})


def test_manifest_labels_as_of_is_read_and_never_after_the_drop(tmp_path):
    folder = write_drop(lagged(2), tmp_path)
    assert read_labels_as_of(folder, date(2024, 3, 31)) == (date(2024, 2, 29), None)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "labels_as_of": "2024-04-30"}))
    _, problem = read_labels_as_of(folder, date(2024, 3, 31))
    assert "after the drop's as_of" in problem
    default = write_drop(DropSpec(1, users=50), tmp_path / "default")
    assert read_labels_as_of(default, date(2024, 2, 29)) == (date(2024, 2, 29), None)


def test_lagged_labels_are_last_months_outcomes():
    lag_tables, lag_truth = build_drop(lagged(2))
    plain_tables, plain_truth = build_drop(DropSpec(1, users=USERS, seed=SEED, drift=default_drift(1)))
    pd.testing.assert_frame_equal(lag_tables["labels"], plain_tables["labels"])
    pd.testing.assert_frame_equal(lag_truth, plain_truth)
    # The features are month_002's own.
    own, _ = build_drop(DropSpec(2, users=USERS, seed=SEED))
    pd.testing.assert_frame_equal(lag_tables["usage_agg_30d"], own["usage_agg_30d"])


@pytest.mark.slow
def test_labels_stored_under_their_as_of_joined_point_in_time_and_scored(stack_env):
    from streamflow_mlops.config.settings import CHAMPION_ALIAS, REGISTERED_MODEL
    from streamflow_mlops.features.retrieval import build_training_set
    from streamflow_mlops.features.store import apply_repo
    from streamflow_mlops.model.registry import load_version
    from streamflow_mlops.model.tracking import configure_mlflow
    from streamflow_mlops.pipelines.performance import measure_realized_performance
    from streamflow_mlops.pipelines.train import train_and_register

    def connect():
        return psycopg.connect(stack_env.db_url)

    for month in (0, 1, 2):
        write_drop(lagged(month), stack_env.drops_dir)
        load_month(validate_month(f"month_{month:03d}", connect), connect)
    with connect() as conn:
        stored = conn.execute("SELECT as_of, count(*) FROM streamflow.labels GROUP BY 1 ORDER BY 1").fetchall()
    # month_000 brings its own period (the starting history), month_001 brings the same period
    # again, month_002 brings month_001's: nothing is labelled at month_002's as_of.
    assert stored == [(date(2024, 1, 31), USERS), (date(2024, 2, 29), USERS)]

    apply_repo()
    frame = build_training_set(Month(2))
    assert set(frame[TIMESTAMP].dt.date) == {date(2024, 2, 29)}
    month_001, _ = build_drop(DropSpec(1, users=USERS, seed=SEED, drift=default_drift(1)))
    expected = month_001["labels"].merge(month_001["subscriptions"], on=ENTITY)
    joined = frame.merge(expected, on=ENTITY, suffixes=("", "_drop"))
    assert len(joined) == USERS
    assert (joined[LABEL] == joined[f"{LABEL}_drop"]).all()
    # Features as of the labels' date (month_001's fees, after its 15% rise), not month_002's.
    assert (joined["monthly_fee"] == joined["monthly_fee_drop"]).all()

    champion = train_and_register("month_000", seed=1)
    assert champion["labels_as_of"] == "2024-01-31"
    configure_mlflow(stack_env).set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, champion["version"])
    registered = load_version(configure_mlflow(stack_env), champion["version"])
    assert registered.labels_as_of == date(2024, 1, 31)
    assert measure_realized_performance(Month(1), registered, stack_env)["status"] == "skipped"
    realized = measure_realized_performance(Month(2), registered, stack_env)
    assert realized["status"] == "measured" and realized["as_of"] == "2024-02-29" and realized["rows"] == USERS
