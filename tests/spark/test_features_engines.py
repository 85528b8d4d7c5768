"""Feast on both engines over the same two months: the same point-in-time training sets (same rows,
same order, same values and types) and the same online store, byte for byte. Real Spark (local[2]),
Feast's Spark offline store and compute engine, the warehouse's Postgres for the other engine."""

from __future__ import annotations

import pandas as pd
import psycopg
import pytest

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY, FEATURE_NAMES, LABEL, TIMESTAMP
from streamflow_mlops.config.settings import get_settings
from streamflow_mlops.data.lake_load import load_drop as load_lake
from streamflow_mlops.features.materialize import materialize_month
from streamflow_mlops.features.parity import check_parity, lake_parity_sample_users, parity_sample_users
from streamflow_mlops.features.retrieval import build_training_set, feature_frame, iter_training_set
from streamflow_mlops.features.store import apply_repo
from streamflow_mlops.synthetic.generate import DropSpec
from tests.conftest import load_months
from tests.integration.test_features import online_table_digest

pytestmark = pytest.mark.slow
USERS = 300


def test_both_engines_give_the_same_training_sets_and_online_store(spark, stack_env, tmp_path, monkeypatch):
    drops = tmp_path / "drops"
    load_months(stack_env.db_url, drops, (0, 1), USERS)
    apply_repo()
    postgres = {m: build_training_set(Month(m)) for m in (0, 1)}
    postgres_sample = feature_frame(Month(1))
    for m in (0, 1):
        materialize_month(Month(m), force=True)
    postgres_online = online_table_digest(stack_env)

    monkeypatch.setenv("STREAMFLOW_ENGINE", "spark")
    monkeypatch.setenv("STREAMFLOW_HOME", str(tmp_path / "spark-state"))
    get_settings.cache_clear()
    settings = get_settings()
    for m in (0, 1):
        load_lake(spark, settings.lake_url, drops / Month(m).name, DropSpec(m).as_of)
    apply_repo(settings)
    for m in (0, 1):
        on_spark = build_training_set(Month(m), settings=settings)
        assert list(on_spark.columns) == [ENTITY, TIMESTAMP, *FEATURE_NAMES, LABEL]
        assert on_spark[ENTITY].is_monotonic_increasing
        pd.testing.assert_frame_equal(on_spark, postgres[m])
    # Chunked reads give the same rows in the same order, whatever the chunk size.
    chunks = list(iter_training_set(Month(1), settings=settings, chunk_rows=70))
    assert max(len(c) for c in chunks) <= 70
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), postgres[1])
    pd.testing.assert_frame_equal(feature_frame(Month(1), settings=settings), postgres_sample)

    for m in (0, 1):
        report = materialize_month(Month(m), settings=settings, force=True)
        assert set(report["users"].values()) == {USERS}
    assert online_table_digest(settings) == postgres_online
    assert "back in time" in materialize_month(Month(0), settings=settings)["skipped"]
    # The DAG's parity check reads its sample from the lake: the same users as from the warehouse.
    assert check_parity(Month(1), sample=50, settings=settings)["mismatches"] == 0
    with psycopg.connect(stack_env.db_url) as conn:
        expected = parity_sample_users(conn, Month(1).as_of_ts, 50)
    assert lake_parity_sample_users(settings, Month(1).as_of_ts, 50) == expected
