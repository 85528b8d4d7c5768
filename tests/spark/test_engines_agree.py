"""Both engines through the same months, compared step by step (issue 26's "same results").

One run per engine, shared by the tests below (each step costs seconds to minutes): the same drops
are loaded into the warehouse (postgres engine) and the lake (spark engine, local[2]); then on each
engine, as its DAG tasks do: Feast apply, the point-in-time training sets and feature frames,
materialization into its own sqlite online store, training month_000 (seed 42), scoring month_001
with one champion, month_002 (bringing contacts.csv for month_001's list) loaded, its drift check
with realized performance, and the campaign measured. Real Spark, Feast, MLflow, Evidently, Postgres.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pytest

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY, FEATURE_NAMES, LABEL, TIMESTAMP
from streamflow_mlops.config.settings import CHAMPION_ALIAS, REGISTERED_MODEL, get_settings, replace_database
from streamflow_mlops.data import lake_load
from streamflow_mlops.data.warehouse import create_schema, load_drop
from streamflow_mlops.synthetic.generate import (
    DropSpec,
    default_drift,
    find_contact_list,
    read_contact_list,
    write_drop,
)
from tests.conftest import bentoml_home
from tests.integration.test_features import online_table_digest

pytestmark = pytest.mark.slow
USERS = 600
TOP_K = 60
SCORE_COLUMNS = [
    "month", "user_id", "as_of", "churn_probability", "rank", "decile", "model_version", "reasons",
    "monthly_fee", "expected_loss", "loss_rank", "arm",
]  # fmt: skip


@dataclass
class EngineRun:
    """What one engine produced, step by step."""

    settings: Any = None
    training: dict[int, pd.DataFrame] = field(default_factory=dict)
    chunked: pd.DataFrame | None = None
    sample: pd.DataFrame | None = None
    online: list = field(default_factory=list)
    parity: dict = field(default_factory=dict)
    model_metrics: dict[str, float] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    scores: pd.DataFrame | None = None
    campaign: list = field(default_factory=list)
    lists: dict[str, pd.DataFrame] = field(default_factory=dict)
    drift: dict = field(default_factory=dict)
    campaigns: list = field(default_factory=list)


def warehouse_scores(db_url: str) -> pd.DataFrame:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(f"SELECT {', '.join(SCORE_COLUMNS)} FROM streamflow.churn_scores ORDER BY rank").fetchall()
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def lake_scores(settings) -> pd.DataFrame:
    from streamflow_mlops.data.spark import spark_session
    from streamflow_mlops.pipelines.score_spark import month_scores

    frame = month_scores(spark_session(), settings, Month(1)).toPandas()[SCORE_COLUMNS]
    frame = frame.sort_values("rank", ignore_index=True)
    frame["reasons"] = frame["reasons"].map(json.loads)
    frame["arm"] = frame["arm"].astype(object).where(frame["arm"].notna(), None)
    return frame


def campaign_rows(db_url: str) -> list[tuple]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT month, user_id, as_of, arm, contacted, rank, rank_by, churn_probability, monthly_fee, "
            "expected_loss, control_share, model_version FROM streamflow.retention_campaigns ORDER BY rank"
        ).fetchall()


def run_metrics(settings, run_id: str) -> dict[str, float]:
    from mlflow import MlflowClient

    metrics = MlflowClient(tracking_uri=settings.mlflow_tracking_uri).get_run(run_id).data.metrics
    return {k: v for k, v in metrics.items() if "second" not in k}


def load_month(settings, spark, folder: Path, as_of) -> None:
    if settings.engine == "spark":
        lake_load.load_drop(spark, settings.lake_url, folder, as_of)
        return
    with psycopg.connect(settings.db_url) as conn:
        create_schema(conn)
        with conn.transaction():
            load_drop(conn, folder, as_of)


def run_engine(settings, spark, drops: Path, champion: dict | None) -> tuple[EngineRun, dict]:
    """Every step on `settings.engine`; trains the champion when none is given (the first engine)."""
    from streamflow_mlops.features.materialize import materialize_month
    from streamflow_mlops.features.parity import check_parity
    from streamflow_mlops.features.retrieval import build_training_set, feature_frame, iter_training_set
    from streamflow_mlops.features.store import apply_repo
    from streamflow_mlops.model.tracking import configure_mlflow
    from streamflow_mlops.pipelines.campaigns import measure_campaigns
    from streamflow_mlops.pipelines.drift import run_drift_check
    from streamflow_mlops.pipelines.score import score_month
    from streamflow_mlops.pipelines.train import train_and_register

    run = EngineRun(settings=settings)
    for m in (0, 1):
        load_month(settings, spark, drops / Month(m).name, DropSpec(m).as_of)
    apply_repo(settings)
    run.training = {m: build_training_set(Month(m), settings=settings) for m in (0, 1)}
    run.chunked = pd.concat(list(iter_training_set(Month(1), settings=settings, chunk_rows=70)), ignore_index=True)
    run.sample = feature_frame(Month(1), settings=settings)
    for m in (0, 1):
        materialize_month(Month(m), settings=settings, force=True)
    run.online = online_table_digest(settings)
    run.parity = check_parity(Month(1), sample=50, settings=settings)

    trained = train_and_register("month_000", seed=42)
    run.model_metrics = run_metrics(settings, trained["run_id"])
    champion = champion or trained
    configure_mlflow(settings).set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, champion["version"])
    run.summary = score_month("month_001", top_k=TOP_K)
    run.scores = lake_scores(settings) if settings.engine == "spark" else warehouse_scores(settings.db_url)
    run.campaign = campaign_rows(settings.db_url)
    run.lists = {k: pd.read_csv(run.summary[k]) for k in ("retention_list", "control_list")}

    reached = read_contact_list(find_contact_list(settings.state_dir / "scores", 1))
    spec = DropSpec(2, users=USERS, seed=42, drift=default_drift(2), treatment_effect=0.5)
    folder = write_drop(spec, drops.parent / f"drops-2-{settings.engine}", reached=reached)
    load_month(settings, spark, folder, spec.as_of)
    run.drift = run_drift_check("month_002", settings=settings)
    run.campaigns = measure_campaigns(settings)
    return run, champion


@pytest.fixture(scope="module")
def engines(spark, pg_server, tmp_path_factory) -> dict[str, EngineRun]:
    from streamflow_mlops.synthetic.generate import write_drop

    root = tmp_path_factory.mktemp("engines")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db_url = replace_database(pg_server, name)
    drops = root / "drops"
    for m in (0, 1):
        write_drop(DropSpec(m, users=USERS, seed=42, drift=default_drift(m)), drops)
    runs: dict[str, EngineRun] = {}
    champion = None
    try:
        with pytest.MonkeyPatch.context() as mp, bentoml_home(root / "bentoml"):
            mp.setenv("STREAMFLOW_DB_URL", db_url)
            mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
            mp.setenv("BENTOML_HOME", str(root / "bentoml"))
            mp.setenv("STREAMFLOW_DROPS_DIR", str(drops))
            mp.delenv("STREAMFLOW_FEAST_ONLINE_STORE", raising=False)
            for engine in ("postgres", "spark"):
                mp.setenv("STREAMFLOW_ENGINE", engine)
                mp.setenv("STREAMFLOW_HOME", str(root / f"state-{engine}"))
                get_settings.cache_clear()
                runs[engine], champion = run_engine(get_settings(), spark, drops, champion)
        yield runs
    finally:
        get_settings.cache_clear()
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_same_point_in_time_training_sets_and_feature_frames(engines):
    postgres, spark = engines["postgres"], engines["spark"]
    for m in (0, 1):
        assert list(spark.training[m].columns) == [ENTITY, TIMESTAMP, *FEATURE_NAMES, LABEL]
        assert spark.training[m][ENTITY].is_monotonic_increasing and len(spark.training[m]) == USERS
        pd.testing.assert_frame_equal(spark.training[m], postgres.training[m])
    # Read a chunk at a time, the same rows in the same order.
    pd.testing.assert_frame_equal(spark.chunked, postgres.training[1])
    pd.testing.assert_frame_equal(spark.sample, postgres.sample)


def test_the_same_online_store_byte_for_byte(engines):
    assert engines["spark"].online == engines["postgres"].online and engines["spark"].online
    assert engines["spark"].parity["mismatches"] == 0 and engines["spark"].parity["users_checked"] == 50


def test_the_same_model_from_the_same_training_set(engines):
    assert engines["spark"].model_metrics == engines["postgres"].model_metrics
    assert "val_auc" in engines["spark"].model_metrics


def test_the_same_scores_ranks_lists_and_campaign(engines):
    postgres, spark = engines["postgres"], engines["spark"]
    pd.testing.assert_frame_equal(spark.scores, postgres.scores, check_dtype=False)
    assert spark.campaign == postgres.campaign and len(spark.campaign) == TOP_K
    for key in ("scored_users", "predicted_churn_rate", "treatment_users", "control_users", "top_k_min_probability"):
        assert spark.summary[key] == postgres.summary[key], key
    for key in (
        "mean_probability", "expected_loss_total", "top_k_expected_loss_by_probability",
        "top_k_expected_loss_by_expected_loss",
    ):  # fmt: skip
        assert spark.summary[key] == pytest.approx(postgres.summary[key], rel=1e-12), key  # sums in another order
    for key, expected in postgres.lists.items():
        listed = spark.lists[key]
        pd.testing.assert_frame_equal(
            listed.assign(reasons=listed["reasons"].map(json.loads)),
            expected.assign(reasons=expected["reasons"].map(json.loads)),
        )


def test_the_same_drift_decision_realized_performance_and_campaign_outcome(engines):
    postgres, spark = engines["postgres"].drift, engines["spark"].drift
    for key in ("reference_month", "drift_share", "drifted_columns", "decision", "reason", "causes"):
        assert spark[key] == postgres[key], key
    assert spark["performance"]["status"] == "measured"
    for key in ("auc", "rows", "treated_excluded", "brier"):
        assert spark["performance"][key] == pytest.approx(postgres["performance"][key], rel=1e-12), key
    ours, theirs = engines["spark"].campaigns, engines["postgres"].campaigns
    assert [a["status"] for a in ours] == ["measured"]
    assert {k: v for k, v in ours[0].items() if k != "measured_at"} == pytest.approx(
        {k: v for k, v in theirs[0].items() if k != "measured_at"}
    )
