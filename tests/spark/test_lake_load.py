"""The spark engine's load against the warehouse's: same tables, same rows and types, month by
month; re-runs in any order; a failed load leaves the lake as it was. Real Spark (local[2])."""

from __future__ import annotations

import shutil

import pandas as pd
import psycopg
import pytest

from streamflow_mlops.config.schema import CONTACTS, FEATURE_GROUPS, RAW_TABLES
from streamflow_mlops.data import lake
from streamflow_mlops.data.lake_load import load_drop as load_lake
from streamflow_mlops.data.lake_load import read_table
from streamflow_mlops.data.warehouse import create_schema
from streamflow_mlops.data.warehouse import load_drop as load_warehouse
from streamflow_mlops.synthetic.generate import DropSpec, default_drift, write_drop

pytestmark = pytest.mark.slow
TABLES = [t.name for t in RAW_TABLES] + [g.table for g in FEATURE_GROUPS]


def lake_rows(spark, lake_url: str, table: str) -> pd.DataFrame:
    frame = read_table(spark, lake_url, table).toPandas()
    frame["as_of"] = pd.to_datetime(frame["as_of"]).dt.date
    return frame.sort_values(["as_of", "user_id"], ignore_index=True)


def warehouse_rows(conn, table: str, columns: list[str]) -> pd.DataFrame:
    cur = conn.execute(f'SELECT {", ".join(columns)} FROM streamflow.{table} ORDER BY as_of, user_id COLLATE "C"')
    frame = pd.DataFrame(cur.fetchall(), columns=columns)
    frame["as_of"] = frame["as_of"].map(lambda v: v.date() if hasattr(v, "date") else v)
    return frame


@pytest.fixture(scope="module")
def drops(tmp_path_factory):
    out = tmp_path_factory.mktemp("drops")
    return {
        0: write_drop(DropSpec(0, users=300), out),
        1: write_drop(DropSpec(1, users=300, drift=default_drift(1)), out),
    }


def test_both_engines_load_the_same_rows(spark, fresh_db, tmp_path, drops):
    lake_url = str(tmp_path / "lake")
    counts = {}
    with psycopg.connect(fresh_db) as conn:
        create_schema(conn)
        for m in (0, 1):
            with conn.transaction():
                expected = load_warehouse(conn, drops[m], DropSpec(m).as_of)
            counts[m] = load_lake(spark, lake_url, drops[m], DropSpec(m).as_of)
            assert counts[m] == expected
        for name in TABLES:
            ours = lake_rows(spark, lake_url, name)
            columns = list(ours.columns)
            assert columns[:1] == ["user_id"] and columns[-1] == "as_of"
            theirs = warehouse_rows(conn, name, columns)
            pd.testing.assert_frame_equal(ours, theirs, check_dtype=False)
            assert len(ours) == 600, name
    types = dict(read_table(spark, lake_url, "subscriptions_profile_snapshots").dtypes)
    assert types == {
        "user_id": "string", "months_active": "bigint", "paperless_billing": "boolean", "monthly_fee": "double",
        "plan_stream_tv": "boolean", "plan_stream_movies": "boolean", "net_service": "string", "as_of": "date",
    }  # fmt: skip


def test_reloads_in_any_order_replace_a_month_whole(spark, tmp_path, drops):
    lake_url = str(tmp_path / "lake")
    load_lake(spark, lake_url, drops[0], DropSpec(0).as_of)
    first = lake_rows(spark, lake_url, "usage_agg_30d_snapshots")
    load_lake(spark, lake_url, drops[1], DropSpec(1).as_of)
    load_lake(spark, lake_url, drops[0], DropSpec(0).as_of)  # an older month again, after a newer one
    again = lake_rows(spark, lake_url, "usage_agg_30d_snapshots")
    pd.testing.assert_frame_equal(again[again["as_of"] == DropSpec(0).as_of], first)
    assert lake.months(lake_url, "users") == [DropSpec(0).as_of, DropSpec(1).as_of]
    # Nothing is left aside: every staged month was swapped in and its predecessor removed.
    for name in TABLES:
        assert not any((tmp_path / "lake" / name / lake.STAGING).iterdir()), name


def test_an_optional_table_follows_the_drop(spark, tmp_path, drops):
    lake_url = str(tmp_path / "lake")
    with_contacts = tmp_path / "with" / drops[1].name
    shutil.copytree(drops[1], with_contacts)
    (with_contacts / CONTACTS.file).write_text("user_id\n" + "".join(f"{i:04d}-AAAAA\n" for i in range(5)))
    counts = load_lake(spark, lake_url, with_contacts, DropSpec(1).as_of)
    assert counts[CONTACTS.name] == 5
    assert lake.months(lake_url, CONTACTS.name) == [DropSpec(1).as_of]
    load_lake(spark, lake_url, drops[1], DropSpec(1).as_of)  # re-delivered without the file
    assert lake.months(lake_url, CONTACTS.name) == []


def test_a_failed_load_leaves_the_lake_as_it_was(spark, tmp_path, drops):
    """The last raw table fails to parse after five tables of the month were written aside."""
    lake_url = str(tmp_path / "lake")
    load_lake(spark, lake_url, drops[0], DropSpec(0).as_of)
    before = {name: lake_rows(spark, lake_url, name) for name in TABLES}
    broken = tmp_path / "broken" / drops[0].name
    shutil.copytree(drops[0], broken)
    labels = broken / "labels.csv"
    labels.write_text(labels.read_text() + "9999-ZZZZZ,not-a-number\n")
    with pytest.raises(Exception, match="not-a-number"):
        load_lake(spark, lake_url, broken, DropSpec(0).as_of)
    for name in TABLES:
        pd.testing.assert_frame_equal(lake_rows(spark, lake_url, name), before[name])
        assert not any((tmp_path / "lake" / name / lake.STAGING).iterdir()), name


def test_the_ingest_dag_tasks_load_into_the_lake_with_the_spark_engine(spark, stack_env, monkeypatch, drops):
    """validate_month + load_month as the DAG calls them: a month the warehouse holds is loaded
    again once the engine is spark (the lake lacks it), its `ingestion_runs` rows in Postgres;
    a re-run then finds it unchanged."""
    from streamflow_mlops.config.settings import get_settings
    from streamflow_mlops.data.ingest import load_month, validate_month

    shutil.copytree(drops[0], stack_env.drops_dir / drops[0].name)

    def connect():
        return psycopg.connect(stack_env.db_url)

    # The month went to the warehouse first; the engine switched since: the same drop is loaded again.
    assert load_month(validate_month("month_000", connect), connect)["changed"] is True
    monkeypatch.setenv("STREAMFLOW_ENGINE", "spark")
    get_settings.cache_clear()
    settings = get_settings()
    loaded = load_month(validate_month("month_000", connect), connect)
    assert loaded["changed"] is True and loaded["row_counts"]["usage_agg_30d_snapshots"] == 300
    assert lake.months(settings.lake_url, "usage_agg_30d_snapshots") == [DropSpec(0).as_of]
    assert load_month(validate_month("month_000", connect), connect)["changed"] is False
    with psycopg.connect(settings.db_url) as conn:
        statuses = conn.execute("SELECT status FROM streamflow.ingestion_runs ORDER BY run_id").fetchall()
        assert statuses == [("success",), ("success",), ("unchanged",)]
        assert conn.execute("SELECT count(*) FROM streamflow.users").fetchone() == (300,)  # the first load's
