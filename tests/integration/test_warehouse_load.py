"""The COPY load against a real Postgres: row counts, snapshots, idempotence, months side by side,
one partition per month, and a failed load that leaves everything as it was."""

from __future__ import annotations

import shutil

import psycopg
import pytest

from streamflow_mlops.config.schema import FEATURE_GROUPS, RAW_TABLES
from streamflow_mlops.data.warehouse import create_schema, load_drop, partition_name
from streamflow_mlops.synthetic.generate import DropSpec, default_drift, write_drop

TABLES = [t.name for t in RAW_TABLES] + [g.table for g in FEATURE_GROUPS]


def table_digest(conn, name: str) -> list[tuple]:
    return conn.execute(f"SELECT * FROM streamflow.{name} ORDER BY as_of, user_id").fetchall()


def partitions(conn) -> dict[str, list[str]]:
    """Each partitioned table's partitions with their bounds and primary keys."""
    rows = conn.execute(
        "SELECT parent.relname, child.relname || ' ' || pg_get_expr(child.relpartbound, child.oid) || ' '"
        " || coalesce((SELECT string_agg(conname, ',') FROM pg_constraint WHERE conrelid = child.oid), '') "
        "FROM pg_inherits JOIN pg_class parent ON parent.oid = inhparent JOIN pg_class child ON child.oid = inhrelid "
        "JOIN pg_namespace n ON n.oid = parent.relnamespace "
        "WHERE n.nspname = 'streamflow' AND parent.relkind = 'p' ORDER BY 1, 2"
    ).fetchall()
    found: dict[str, list[str]] = {}
    for parent, child in rows:
        found.setdefault(parent, []).append(child)
    return found


def test_load_is_idempotent_and_months_coexist(fresh_db, tmp_path):
    m0 = write_drop(DropSpec(0, users=300), tmp_path)
    m1 = write_drop(DropSpec(1, users=300, drift=default_drift(1)), tmp_path)
    spec0, spec1 = DropSpec(0), DropSpec(1)
    with psycopg.connect(fresh_db) as conn:
        create_schema(conn)
        create_schema(conn)  # idempotent
        with conn.transaction():
            counts = load_drop(conn, m0, spec0.as_of)
        assert counts == {name: 300 for name in TABLES}
        first = table_digest(conn, "usage_agg_30d_snapshots")
        with conn.transaction():
            load_drop(conn, m1, spec1.as_of)
        layout = partitions(conn)
        with conn.transaction():
            load_drop(conn, m0, spec0.as_of)  # re-run an older month after a newer one
        assert partitions(conn) == layout
        assert conn.execute("SELECT count(*) FROM streamflow.labels").fetchone()[0] == 600
        again = [r for r in table_digest(conn, "usage_agg_30d_snapshots") if r[1].date() == spec0.as_of]
        assert again == first
        row = conn.execute(
            "SELECT monthly_fee, net_service, paperless_billing FROM streamflow.subscriptions_profile_snapshots "
            "WHERE as_of = '2024-01-31' LIMIT 1"
        ).fetchone()
        assert isinstance(row[0], float) and row[1] in ("DSL", "Fiber optic", "No") and isinstance(row[2], bool)
    assert sorted(layout) == sorted(TABLES)
    assert layout["users"] == [
        "users_20240131 FOR VALUES IN ('2024-01-31') users_20240131_pkey",
        "users_20240229 FOR VALUES IN ('2024-02-29') users_20240229_pkey",
    ]
    assert layout["usage_agg_30d_snapshots"][0].startswith(
        f"{partition_name('usage_agg_30d_snapshots', spec0.as_of)} FOR VALUES IN ('2024-01-31 00:00:00+00')"
    )


def test_a_failed_load_leaves_the_warehouse_as_it_was(fresh_db, tmp_path):
    """The last table's primary key fails after five tables of the month were already rebuilt."""
    m0 = write_drop(DropSpec(0, users=200), tmp_path / "good")
    broken = tmp_path / "broken" / m0.name
    shutil.copytree(m0, broken)
    labels = broken / "labels.csv"
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join(lines + [lines[1]]) + "\n")
    with psycopg.connect(fresh_db) as conn:
        create_schema(conn)
        with conn.transaction():
            load_drop(conn, m0, DropSpec(0).as_of)
        before = {name: table_digest(conn, name) for name in TABLES}, partitions(conn)
        with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
            load_drop(conn, broken, DropSpec(0).as_of)
        assert ({name: table_digest(conn, name) for name in TABLES}, partitions(conn)) == before


def test_create_schema_refuses_an_unpartitioned_table(fresh_db):
    with psycopg.connect(fresh_db) as conn:
        conn.execute("CREATE SCHEMA streamflow")
        conn.execute("CREATE TABLE streamflow.labels (user_id TEXT, as_of DATE, churn_label BIGINT)")
        conn.commit()
        with pytest.raises(RuntimeError, match=r"streamflow\.\{labels\} predate the partitioned"):
            create_schema(conn)
