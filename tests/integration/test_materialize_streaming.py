"""Streamed materialization (issue 25): a month read and written in chunks leaves the online store
exactly as one chunk, parallel workers and Feast's own engine leave it."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from datetime import timedelta

import psycopg
from feast import FeatureStore

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY, FEATURE_GROUPS, FEATURE_NAMES
from streamflow_mlops.config.settings import FEATURE_SERVICE, Settings, get_settings
from streamflow_mlops.extensions.feast import bulk_materialization
from streamflow_mlops.features.materialize import materialization_window, materialize_month
from streamflow_mlops.features.store import apply_repo, feature_store, repo_config
from tests.conftest import load_months

USERS = 400
# Every view spans eleven chunks; not a divisor of the row counts, so the last chunk is partial.
SMALL_CHUNK = 37
MONTHS = ("month_000", "month_001")
UNKNOWN = "0000-NOONE"


def online_rows(settings: Settings) -> dict[str, list[tuple]]:
    """Every column of every row of the views' sqlite tables, in key order."""
    with sqlite3.connect(settings.state_dir / "online_store.db") as conn:
        return {
            g.name: conn.execute(f"SELECT * FROM streamflow_{g.name} ORDER BY entity_key, feature_name").fetchall()
            for g in FEATURE_GROUPS
        }


def online_answers(settings: Settings, users: list[str]) -> dict[str, list]:
    store = feature_store(settings)
    service = store.get_feature_service(FEATURE_SERVICE)
    return store.get_online_features(features=service, entity_rows=[{ENTITY: u} for u in users]).to_dict()


def fresh_store(monkeypatch, state_dir, chunk_rows: int) -> Settings:
    """Settings for a new online store over the same warehouse and registry, reading `chunk_rows` at a time."""
    monkeypatch.setenv("STREAMFLOW_HOME", str(state_dir))
    monkeypatch.setenv("STREAMFLOW_CHUNK_ROWS", str(chunk_rows))
    get_settings.cache_clear()
    apply_repo()
    return get_settings()


def streamed(caplog) -> dict[str, tuple[int, int]]:
    """(rows, chunks) per view, from the streamed plan's log lines (view, rows, chunks, chunk size)."""
    return {r.args[0]: r.args[1:3] for r in caplog.records if r.name == bulk_materialization.__name__}


def test_materializing_in_small_chunks_writes_what_one_chunk_and_feast_write(stack_env, tmp_path, monkeypatch, caplog):
    load_months(stack_env.db_url, tmp_path / "drops", (0, 1), USERS)
    with psycopg.connect(stack_env.db_url) as conn:
        users = [u for (u,) in conn.execute(f"SELECT DISTINCT {ENTITY} FROM streamflow.users ORDER BY 1")]
        # Users missing from one view's month_001 (a run of them across a chunk edge, and the last
        # ones): the chunk edges fall elsewhere in that view, and the online store keeps their
        # month_000 rows.
        conn.execute(
            "DELETE FROM streamflow.payments_agg_90d_snapshots WHERE user_id = ANY(%s) AND as_of = %s",
            (users[30:45] + users[-3:], Month(1).as_of_ts),
        )
    caplog.set_level(logging.INFO, logger=bulk_materialization.__name__)

    stores, answers = {}, {}
    for label, chunk_rows, workers in (
        ("one_chunk", 1_000_000, 1),
        ("small", SMALL_CHUNK, 1),
        ("small_w2", SMALL_CHUNK, 2),
    ):
        settings = fresh_store(monkeypatch, tmp_path / label, chunk_rows)
        caplog.clear()
        for month in MONTHS:  # the second month upserts over the first's rows, as the monthly run does
            materialize_month(month, workers=workers)
        if workers == 1:  # the workers' logs stay in their processes
            counts = streamed(caplog)
            assert set(counts) == {g.name for g in FEATURE_GROUPS}
            for view, (rows, chunks) in counts.items():
                assert chunks == -(-rows // chunk_rows) and rows >= USERS - 18, view
                assert chunks > 1 if chunk_rows == SMALL_CHUNK else chunks == 1, view
        stores[label], answers[label] = online_rows(settings), online_answers(settings, [*users, UNKNOWN])

    # Feast's stock engine (the whole window in memory, a proto and an INSERT per value), new store.
    stock_settings = fresh_store(monkeypatch, tmp_path / "feast", SMALL_CHUNK)
    stock = repo_config(stock_settings)
    stock.batch_engine_config = "local"
    for month in MONTHS:
        start, end = materialization_window(Month.parse(month).as_of_ts, timedelta(days=31))
        FeatureStore(repo_path=str(stock_settings.feature_repo), config=stock).materialize(
            start_date=start, end_date=end
        )
    stores["feast"], answers["feast"] = online_rows(stock_settings), online_answers(stock_settings, [*users, UNKNOWN])

    reference = stores["one_chunk"]
    assert sum(map(len, reference.values())) == len(FEATURE_NAMES) * USERS
    for label in stores:
        for view, rows in stores[label].items():
            assert rows == reference[view], f"{label}: {view} differs from one chunk"
        assert answers[label] == answers["one_chunk"], f"{label}: get_online_features answers differently"
    assert answers["one_chunk"][ENTITY] == [*users, UNKNOWN] and answers["one_chunk"]["monthly_fee"][-1] is None
    assert all(value is not None for value in answers["one_chunk"]["failed_payments_90d"][:-1])


def test_only_latest_row_reads_into_sqlite_without_offline_write_stream(stack_env, tmp_path):
    """Feast's all-rows read may split a key's rows over two chunks, an offline write needs the
    whole table, another online store writes Feast's way: each of those runs Feast's plan whole."""
    from feast.infra.common.materialization_job import MaterializationTask
    from feast.infra.compute_engines.backends.pandas_backend import PandasBackend

    load_months(stack_env.db_url, tmp_path / "drops", (0,), 20)
    apply_repo()
    store = feature_store(stack_env)
    view = store.get_feature_view(FEATURE_GROUPS[0].name)
    start, end = materialization_window(Month(0).as_of_ts, view.ttl)
    engine = store._get_provider().batch_engine
    task = MaterializationTask(project=store.project, feature_view=view, start_time=start, end_time=end)
    context = engine.get_execution_context(store.registry, task)
    plan = bulk_materialization.BulkFeatureBuilder(store.registry, task, backend=PandasBackend()).build()
    assert plan.streams(context)

    all_rows = context.repo_config.model_copy(deep=True)
    all_rows.materialization_config.pull_latest_features = False
    assert not plan.streams(dataclasses.replace(context, repo_config=all_rows))
    assert not plan.streams(dataclasses.replace(context, online_store=object()))
    view.offline = True
    assert not plan.streams(context)
