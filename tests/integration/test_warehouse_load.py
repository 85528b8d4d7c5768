"""The COPY load against a real Postgres: row counts, snapshots, idempotence, months side by side."""

from __future__ import annotations

import psycopg

from streamflow_mlops.generate import DropSpec, default_drift, write_drop
from streamflow_mlops.warehouse import create_schema, load_drop


def table_digest(conn, name: str) -> list[tuple]:
    return conn.execute(f"SELECT * FROM streamflow.{name} ORDER BY as_of, user_id").fetchall()


def test_load_is_idempotent_and_months_coexist(fresh_db, tmp_path):
    m0 = write_drop(DropSpec(0, users=300), tmp_path)
    m1 = write_drop(DropSpec(1, users=300, drift=default_drift(1)), tmp_path)
    spec0, spec1 = DropSpec(0), DropSpec(1)
    with psycopg.connect(fresh_db) as conn:
        create_schema(conn)
        with conn.transaction():
            counts = load_drop(conn, m0, spec0.as_of)
        assert counts["users"] == 300 and counts["subscriptions_profile_snapshots"] == 300
        first = table_digest(conn, "usage_agg_30d_snapshots")
        with conn.transaction():
            load_drop(conn, m1, spec1.as_of)
        with conn.transaction():
            load_drop(conn, m0, spec0.as_of)  # re-run an older month after a newer one
        assert conn.execute("SELECT count(*) FROM streamflow.labels").fetchone()[0] == 600
        again = [r for r in table_digest(conn, "usage_agg_30d_snapshots") if r[1].date() == spec0.as_of]
        assert again == first
        row = conn.execute(
            "SELECT monthly_fee, net_service, paperless_billing FROM streamflow.subscriptions_profile_snapshots "
            "WHERE as_of = '2024-01-31' LIMIT 1").fetchone()
        assert isinstance(row[0], float) and row[1] in ("DSL", "Fiber optic", "No") and isinstance(row[2], bool)
