"""The warehouse (schema `streamflow`): DDL derived from the schema declarations, and the bulk load."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path

import psycopg
from psycopg import sql

from streamflow_mlops.config.schema import (
    ENTITY,
    FEATURE_GROUPS,
    LABELS,
    OPTIONAL_TABLES,
    RAW_TABLES,
    SQL_TYPES,
    TIMESTAMP,
    Column,
    FeatureGroup,
    Table,
)
from streamflow_mlops.config.settings import WAREHOUSE_SCHEMA

S = WAREHOUSE_SCHEMA
# The CHECK a month's table carries until it is attached as a partition.
BOUND_CHECK = "partition_bound"


def _partitioned_table_ddl(name: str, columns: tuple[Column, ...], timestamp_type: str) -> str:
    # One LIST partition per as_of: a month is loaded into a fresh table and swapped in whole,
    # instead of deleting and re-inserting a million rows through a live primary key.
    # user_id compares bytewise (COLLATE "C"): ids are ASCII, and the primary-key sorts run about
    # twice as fast as under a libc locale (docs/decisions.md).
    cols = "".join(f"  {c.name} {SQL_TYPES[c.dtype]} NOT NULL,\n" for c in columns)
    return (
        f'CREATE TABLE IF NOT EXISTS {S}.{name} (\n  {ENTITY} TEXT COLLATE "C" NOT NULL,\n'
        f"  {TIMESTAMP} {timestamp_type} NOT NULL,\n{cols}"
        f"  PRIMARY KEY ({ENTITY}, {TIMESTAMP})\n) PARTITION BY LIST ({TIMESTAMP})"
    )


def raw_table_ddl() -> list[str]:
    return [_partitioned_table_ddl(t.name, t.columns, "DATE") for t in RAW_TABLES + OPTIONAL_TABLES]


def snapshot_table_ddl() -> list[str]:
    # Feast's point-in-time join needs a timestamp column; as_of is midnight UTC of the month's last day.
    return [_partitioned_table_ddl(g.table, g.columns, "TIMESTAMPTZ") for g in FEATURE_GROUPS]


# Shadow scoring (serving/shadow.py): the version the service also scored and its probability,
# beside the champion's. Nullable: rows served without a shadow, and before the columns existed.
PREDICTION_LOG_SHADOW_DDL = [
    f"ALTER TABLE {S}.prediction_log ADD COLUMN IF NOT EXISTS shadow_version TEXT",
    f"ALTER TABLE {S}.prediction_log ADD COLUMN IF NOT EXISTS shadow_probability DOUBLE PRECISION",
]


OPERATIONAL_DDL = [
    f"""CREATE TABLE IF NOT EXISTS {S}.ingestion_runs (
  run_id BIGSERIAL PRIMARY KEY,
  month TEXT NOT NULL,
  as_of DATE,
  status TEXT NOT NULL,
  row_counts JSONB NOT NULL DEFAULT '{{}}',
  failed_expectations JSONB NOT NULL DEFAULT '[]',
  report_path TEXT,
  started_at TIMESTAMPTZ NOT NULL,
  finished_at TIMESTAMPTZ NOT NULL DEFAULT now()
)""",
    # An identical re-delivery is recorded 'unchanged' and publishes nothing; drop_digest tells.
    f"ALTER TABLE {S}.ingestion_runs ADD COLUMN IF NOT EXISTS drop_digest TEXT",
    f"ALTER TABLE {S}.ingestion_runs DROP CONSTRAINT IF EXISTS ingestion_runs_status_check",
    f"ALTER TABLE {S}.ingestion_runs ADD CONSTRAINT ingestion_runs_status_check "
    "CHECK (status IN ('success', 'unchanged', 'rejected', 'failed'))",
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
    *PREDICTION_LOG_SHADOW_DDL,
    # The monthly batch scores (pipelines/score.py). One LIST partition per month: a re-run
    # builds the month as a new table and swaps it in, rather than delete a million rows.
    f"""CREATE TABLE IF NOT EXISTS {S}.churn_scores (
  month TEXT NOT NULL,
  user_id TEXT COLLATE "C" NOT NULL,
  as_of DATE NOT NULL,
  churn_probability DOUBLE PRECISION NOT NULL,
  rank INTEGER NOT NULL CHECK (rank >= 1),
  decile SMALLINT NOT NULL CHECK (decile BETWEEN 1 AND 10),
  model_version TEXT NOT NULL,
  reasons JSONB NOT NULL,
  scored_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (month, user_id)
) PARTITION BY LIST (month)""",
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
    # Realized performance: one row per evaluated month and model version; as_of is the
    # labels' as_of; re-evaluating a month replaces its row.
    f"""CREATE TABLE IF NOT EXISTS {S}.model_performance (
  month TEXT NOT NULL,
  as_of DATE NOT NULL,
  model_name TEXT NOT NULL,
  model_version TEXT NOT NULL,
  trained_month TEXT,
  rows INTEGER NOT NULL,
  positives INTEGER NOT NULL,
  auc DOUBLE PRECISION NOT NULL,
  pr_auc DOUBLE PRECISION NOT NULL,
  lift_at_10 DOUBLE PRECISION NOT NULL,
  brier DOUBLE PRECISION NOT NULL,
  mean_score DOUBLE PRECISION NOT NULL,
  churn_rate DOUBLE PRECISION NOT NULL,
  validation_auc DOUBLE PRECISION,
  report_path TEXT,
  evaluated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (month, model_version)
)""",
    # Label lag: which labels a month's drop brought, so a month's training set is
    # built from its own drop's labels and never from a later drop's.
    f"ALTER TABLE {S}.ingestion_runs ADD COLUMN IF NOT EXISTS labels_as_of DATE",
    # Retention economics (issue 28). Nullable: partitions scored before the columns existed keep
    # their rows; every month scored since fills them (the loading table is LIKE the parent).
    f"ALTER TABLE {S}.churn_scores ADD COLUMN IF NOT EXISTS monthly_fee DOUBLE PRECISION",
    f"ALTER TABLE {S}.churn_scores ADD COLUMN IF NOT EXISTS expected_loss DOUBLE PRECISION",
    f"ALTER TABLE {S}.churn_scores ADD COLUMN IF NOT EXISTS loss_rank INTEGER CHECK (loss_rank >= 1)",
    f"ALTER TABLE {S}.churn_scores ADD COLUMN IF NOT EXISTS arm TEXT CHECK (arm IN ('treatment', 'control'))",
    # The targeted users of each month's list, written with the export (pipelines/campaigns.py);
    # re-exporting a month replaces its rows. `rank` is the position by `rank_by`.
    f"""CREATE TABLE IF NOT EXISTS {S}.retention_campaigns (
  month TEXT NOT NULL,
  user_id TEXT COLLATE "C" NOT NULL,
  as_of DATE NOT NULL,
  arm TEXT NOT NULL CHECK (arm IN ('treatment', 'control')),
  contacted BOOLEAN NOT NULL,
  rank INTEGER NOT NULL CHECK (rank >= 1),
  rank_by TEXT NOT NULL CHECK (rank_by IN ('expected_loss', 'probability')),
  churn_probability DOUBLE PRECISION NOT NULL,
  monthly_fee DOUBLE PRECISION NOT NULL,
  expected_loss DOUBLE PRECISION NOT NULL,
  control_share DOUBLE PRECISION NOT NULL,
  model_version TEXT NOT NULL,
  exported_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (month, user_id)
)""",
    # One row per campaign month once the next drop's labels are in (monitoring/campaigns.py).
    f"""CREATE TABLE IF NOT EXISTS {S}.campaign_outcomes (
  month TEXT PRIMARY KEY,
  outcome_month TEXT NOT NULL,
  outcome_as_of DATE NOT NULL,
  rank_by TEXT NOT NULL,
  control_share DOUBLE PRECISION NOT NULL,
  horizon_months DOUBLE PRECISION NOT NULL,
  treated_users INTEGER NOT NULL,
  control_users INTEGER NOT NULL,
  treated_churned INTEGER NOT NULL,
  control_churned INTEGER NOT NULL,
  treated_churn_rate DOUBLE PRECISION NOT NULL,
  control_churn_rate DOUBLE PRECISION NOT NULL,
  difference DOUBLE PRECISION NOT NULL,
  difference_low DOUBLE PRECISION NOT NULL,
  difference_high DOUBLE PRECISION NOT NULL,
  confidence DOUBLE PRECISION NOT NULL,
  relative_reduction DOUBLE PRECISION,
  churners_saved DOUBLE PRECISION NOT NULL,
  revenue_saved DOUBLE PRECISION NOT NULL,
  revenue_saved_low DOUBLE PRECISION NOT NULL,
  revenue_saved_high DOUBLE PRECISION NOT NULL,
  control_mean_probability DOUBLE PRECISION NOT NULL,
  control_brier DOUBLE PRECISION NOT NULL,
  treated_mean_probability DOUBLE PRECISION NOT NULL,
  reached_users INTEGER,
  reach_rate DOUBLE PRECISION,
  effect_on_reached DOUBLE PRECISION,
  measured_at TIMESTAMPTZ NOT NULL DEFAULT now()
)""",
    # Realized performance leaves out the users a campaign treated (their outcomes are not model error).
    f"ALTER TABLE {S}.model_performance ADD COLUMN IF NOT EXISTS treated_excluded INTEGER NOT NULL DEFAULT 0",
]


def create_schema(conn: psycopg.Connection) -> None:
    """Create the schema and every table when missing (idempotent)."""
    with conn.transaction():
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {S}")
        for statement in raw_table_ddl() + snapshot_table_ddl() + OPERATIONAL_DDL:
            conn.execute(statement)
        # CREATE TABLE IF NOT EXISTS keeps a table of an older, unpartitioned layout; say so now
        # rather than fail the first load with "is not partitioned".
        unpartitioned = [
            name
            for (name,) in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind <> 'p' ORDER BY 1",
                (S, [t.name for t in RAW_TABLES] + [g.table for g in FEATURE_GROUPS]),
            )
        ]
        if unpartitioned:
            raise RuntimeError(
                f"{S}.{{{', '.join(unpartitioned)}}} predate the partitioned warehouse layout: "
                f"drop schema {S} (or use a new database) and load the months again"
            )


def partition_name(table: str, as_of: date) -> str:
    """The partition of `table` that holds the rows of `as_of`, e.g. `users_20240131` (pure)."""
    return f"{table}_{as_of:%Y%m%d}"


def csv_columns(path: Path, table: Table) -> list[str]:
    """The CSV's column names in file order, checked against the table's (order may vary)."""
    # utf-8-sig: a byte-order mark from a spreadsheet export is not part of the first column's name.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), [])
    columns = [name.strip() for name in header]
    if sorted(columns) != sorted(table.column_names):
        raise ValueError(f"{path.name}: columns {columns} do not match {table.column_names}")
    return columns


@dataclass(frozen=True)
class Partition:
    """A month's partition of `parent` (LIST on `key`), built as the standalone table `loading`
    until `swap_in` replaces the month's old partition with it."""

    parent: str
    name: str
    bound: sql.Composable
    key: str = TIMESTAMP

    @property
    def loading(self) -> str:
        return f"{self.name}_load"

    def ident(self, name: str) -> sql.Identifier:
        return sql.Identifier(S, name)


def create_loading_table(conn: psycopg.Connection, part: Partition) -> None:
    """The month's new table, shaped like the parent (defaults and CHECKs included), empty."""
    # The CHECK matches the partition bound, so ATTACH PARTITION trusts it instead of scanning the rows.
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {loading}").format(loading=part.ident(part.loading)))
    conn.execute(
        sql.SQL(
            "CREATE TABLE {loading} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS, "
            "CONSTRAINT {check} CHECK ({key} = {bound}))"
        ).format(
            loading=part.ident(part.loading),
            parent=part.ident(part.parent),
            check=sql.Identifier(BOUND_CHECK),
            key=sql.Identifier(part.key),
            bound=part.bound,
        )
    )


def add_primary_key(conn: psycopg.Connection, part: Partition, columns: tuple[str, ...] = (ENTITY, TIMESTAMP)) -> None:
    """The loading table's primary key, built once over the loaded rows (a sort), not maintained
    row by row; ATTACH adopts it as the parent's primary key partition."""
    conn.execute(
        sql.SQL("ALTER TABLE {loading} ADD CONSTRAINT {pkey} PRIMARY KEY ({columns})").format(
            loading=part.ident(part.loading),
            pkey=sql.Identifier(f"{part.loading}_pkey"),
            columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
        )
    )


def _copy_raw(conn: psycopg.Connection, table: Table, path: Path, part: Partition) -> int:
    """COPY a CSV straight into the loading table; the CSV has no as_of, a default fills it in."""
    columns = csv_columns(path, table)
    loading, ts = part.ident(part.loading), sql.Identifier(TIMESTAMP)
    create_loading_table(conn, part)
    conn.execute(
        sql.SQL("ALTER TABLE {loading} ALTER COLUMN {ts} SET DEFAULT {bound}").format(
            loading=loading, ts=ts, bound=part.bound
        )
    )
    statement = sql.SQL("COPY {loading} ({columns}) FROM STDIN WITH (FORMAT csv, HEADER true)").format(
        loading=loading, columns=sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with path.open("rb") as handle, conn.cursor() as cur:
        with cur.copy(statement) as copy:
            while chunk := handle.read(1 << 20):
                copy.write(chunk)
        rows = cur.rowcount
    conn.execute(sql.SQL("ALTER TABLE {loading} ALTER COLUMN {ts} DROP DEFAULT").format(loading=loading, ts=ts))
    add_primary_key(conn, part)
    return rows


def _build_snapshot(conn: psycopg.Connection, group: FeatureGroup, part: Partition, raw: dict[str, Partition]) -> int:
    """Join the month's new raw tables into the group's loading snapshot table."""
    first, *rest = group.sources
    create_loading_table(conn, part)
    columns = sql.SQL(", ").join(sql.Identifier(c.name) for c in group.columns)
    entity = sql.Identifier(ENTITY)
    joins = sql.SQL(" ").join(
        sql.SQL("JOIN {table} USING ({entity})").format(table=raw[t.name].ident(raw[t.name].loading), entity=entity)
        for t in rest
    )
    cur = conn.execute(
        sql.SQL(
            "INSERT INTO {loading} ({entity}, {ts}, {columns}) SELECT {entity}, {bound}, {columns} FROM {first} {joins}"
        ).format(
            loading=part.ident(part.loading),
            entity=entity,
            ts=sql.Identifier(TIMESTAMP),
            columns=columns,
            bound=part.bound,
            first=raw[first.name].ident(raw[first.name].loading),
            joins=joins,
        )
    )
    add_primary_key(conn, part)
    return cur.rowcount


def swap_in(conn: psycopg.Connection, part: Partition) -> None:
    """Replace the month's partition (if any) by the loading table, under the partition's own name."""
    name = part.ident(part.name)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {name}").format(name=name))
    conn.execute(
        sql.SQL("ALTER TABLE {loading} RENAME TO {name}").format(
            loading=part.ident(part.loading), name=sql.Identifier(part.name)
        )
    )
    conn.execute(
        sql.SQL("ALTER INDEX {loading_pkey} RENAME TO {pkey}").format(
            loading_pkey=part.ident(f"{part.loading}_pkey"), pkey=sql.Identifier(f"{part.name}_pkey")
        )
    )
    conn.execute(
        sql.SQL("ALTER TABLE {parent} ATTACH PARTITION {name} FOR VALUES IN ({bound})").format(
            parent=part.ident(part.parent), name=name, bound=part.bound
        )
    )
    # Once attached, the partition bound says what the CHECK said.
    conn.execute(
        sql.SQL("ALTER TABLE {name} DROP CONSTRAINT {check}").format(name=name, check=sql.Identifier(BOUND_CHECK))
    )


def load_drop(conn: psycopg.Connection, folder: Path, as_of: date, labels_as_of: date | None = None) -> dict[str, int]:
    """Replace the rows of `as_of` in every raw and snapshot table with the drop's, in the caller's
    transaction; returns row counts per table (an optional table, `contacts`, only when the drop
    has its file; without it the month has no rows there). Idempotent: the same drop always leaves the same rows.
    The labels go under their own `labels_as_of` (a drop with a label lag brings an earlier
    period's outcomes; by default the drop's as_of).

    Each table's month is built as a new standalone table (COPY, then the primary key in one
    sort), then swapped in for the month's old partition at the end, so readers of other months
    are blocked only for the swap and a failure anywhere leaves the old partitions untouched.
    Raises memory for sorts and hashes (`SET LOCAL`) for the rest of the caller's transaction.
    """
    counts: dict[str, int] = {}
    # Sorting for the primary keys and hashing for the profile join are the bulk of the work once
    # rows arrive by COPY: in memory, not in temp-file batches.
    conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
    conn.execute("SET LOCAL work_mem = '128MB'")
    days = {t.name: as_of for t in RAW_TABLES} | {LABELS.name: labels_as_of or as_of}
    raw = {
        t.name: Partition(t.name, partition_name(t.name, days[t.name]), sql.Literal(days[t.name])) for t in RAW_TABLES
    }
    for t in RAW_TABLES:
        counts[t.name] = _copy_raw(conn, t, folder / t.file, raw[t.name])
        # Fresh statistics: without them the planner misjudges the profile join (docs/decisions.md),
        # and so would the readers right after the load (Feast's materialization).
        conn.execute(sql.SQL("ANALYZE {loading}").format(loading=raw[t.name].ident(raw[t.name].loading)))
    midnight = sql.Literal(datetime.combine(as_of, time.min, tzinfo=UTC))
    snapshots = {g.table: Partition(g.table, partition_name(g.table, as_of), midnight) for g in FEATURE_GROUPS}
    for g in FEATURE_GROUPS:
        counts[g.table] = _build_snapshot(conn, g, snapshots[g.table], raw)
    optional = []
    for t in OPTIONAL_TABLES:
        part = Partition(t.name, partition_name(t.name, as_of), sql.Literal(as_of))
        if (folder / t.file).exists():
            counts[t.name] = _copy_raw(conn, t, folder / t.file, part)
            optional.append(part)
        else:
            # A re-delivery without the file leaves no rows of an earlier delivery that had it.
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {name}").format(name=part.ident(part.name)))
    for part in [*raw.values(), *snapshots.values(), *optional]:
        swap_in(conn, part)
    return counts
