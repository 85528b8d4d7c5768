"""Warehouse DDL (schema `streamflow`), derived from the schema declarations."""

from __future__ import annotations

import psycopg

from streamflow_mlops.schema import ENTITY, FEATURE_GROUPS, RAW_TABLES, SQL_TYPES, TIMESTAMP
from streamflow_mlops.settings import WAREHOUSE_SCHEMA

S = WAREHOUSE_SCHEMA


def raw_table_ddl() -> list[str]:
    statements = []
    for t in RAW_TABLES:
        cols = ",\n  ".join(f"{c.name} {SQL_TYPES[c.dtype]} NOT NULL" for c in t.columns)
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {S}.{t.name} (\n  {ENTITY} TEXT NOT NULL,\n  {TIMESTAMP} DATE NOT NULL,\n"
            f"  {cols},\n  PRIMARY KEY ({TIMESTAMP}, {ENTITY})\n)"
        )
    return statements


def snapshot_table_ddl() -> list[str]:
    # Feast's point-in-time join needs a timestamp column; as_of is midnight UTC of the month's last day.
    statements = []
    for g in FEATURE_GROUPS:
        cols = ",\n  ".join(f"{c.name} {SQL_TYPES[c.dtype]} NOT NULL" for c in g.columns)
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {S}.{g.table} (\n  {ENTITY} TEXT NOT NULL,\n  {TIMESTAMP} TIMESTAMPTZ NOT NULL,\n"
            f"  {cols},\n  PRIMARY KEY ({TIMESTAMP}, {ENTITY})\n)"
        )
    return statements


OPERATIONAL_DDL = [
    f"""CREATE TABLE IF NOT EXISTS {S}.ingestion_runs (
  run_id BIGSERIAL PRIMARY KEY,
  month TEXT NOT NULL,
  as_of DATE,
  status TEXT NOT NULL CHECK (status IN ('success', 'rejected', 'failed')),
  row_counts JSONB NOT NULL DEFAULT '{{}}',
  failed_expectations JSONB NOT NULL DEFAULT '[]',
  report_path TEXT,
  started_at TIMESTAMPTZ NOT NULL,
  finished_at TIMESTAMPTZ NOT NULL DEFAULT now()
)""",
    f"""CREATE TABLE IF NOT EXISTS {S}.prediction_log (
  id BIGSERIAL PRIMARY KEY,
  predicted_at TIMESTAMPTZ NOT NULL,
  user_id TEXT NOT NULL,
  features JSONB NOT NULL,
  churn_probability DOUBLE PRECISION NOT NULL,
  model_name TEXT NOT NULL,
  model_version TEXT NOT NULL
)""",
    f"CREATE INDEX IF NOT EXISTS prediction_log_time ON {S}.prediction_log (predicted_at)",
    f"""CREATE TABLE IF NOT EXISTS {S}.drift_reports (
  id BIGSERIAL PRIMARY KEY,
  month TEXT NOT NULL,
  reference_month TEXT,
  drift_share DOUBLE PRECISION,
  drifted_columns JSONB NOT NULL DEFAULT '[]',
  prediction_drift JSONB NOT NULL DEFAULT '{{}}',
  decision TEXT NOT NULL,
  reason TEXT NOT NULL,
  report_path TEXT,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
)""",
]


def create_schema(conn: psycopg.Connection) -> None:
    """Create the schema and every table when missing (idempotent)."""
    with conn.transaction():
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {S}")
        for statement in raw_table_ddl() + snapshot_table_ddl() + OPERATIONAL_DDL:
            conn.execute(statement)
