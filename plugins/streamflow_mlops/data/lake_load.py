"""The spark engine's load of a validated drop: raw and snapshot tables as Parquet in the lake.

The same tables, columns, types and rows as the warehouse load (data/warehouse.py `load_drop`),
written by Spark's executors: each CSV is read as text in the file's column order and cast to the
schema's types (validation has proved every cell parses), the snapshot tables are the same joins
on user_id, and every month of every table is written aside, then swapped in (data/lake.py).
Nothing of the month is replaced until every table is written, so a failure while writing leaves
the lake as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from streamflow_mlops.config.schema import ENTITY, FEATURE_GROUPS, LABELS, OPTIONAL_TABLES, RAW_TABLES, Table
from streamflow_mlops.data import lake
from streamflow_mlops.data.warehouse import csv_columns

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

SPARK_TYPES = {"str": "string", "int": "bigint", "float": "double", "bool": "boolean"}


def spark_schema_ddl(table: Table) -> str:
    """The table's columns as Spark DDL, e.g. `user_id string, months_active bigint` (pure)."""
    return ", ".join([f"{ENTITY} string", *(f"{c.name} {SPARK_TYPES[c.dtype]}" for c in table.columns)])


def read_csv(spark: SparkSession, path: Path, table: Table) -> DataFrame:
    """A validated CSV as a typed frame in the table's column order; the header's order may differ."""
    from pyspark.sql import functions as F

    columns = csv_columns(path, table)
    text = spark.read.csv(
        str(path),
        schema=", ".join(f"`{name}` string" for name in columns),
        header=True,
        enforceSchema=True,
        mode="FAILFAST",
    )
    types = {c.name: SPARK_TYPES[c.dtype] for c in table.columns}
    return text.select(F.col(ENTITY), *(F.col(name).cast(types[name]).alias(name) for name in types))


def write_staged(frame: DataFrame, url: str) -> DataFrame:
    """Write `frame` to the staging folder `url` and read it back (from Parquet, not the CSV again)."""
    frame.write.mode("errorifexists").parquet(url)
    return frame.sparkSession.read.parquet(url)


def snapshot_frame(group, raw: dict[str, DataFrame]) -> DataFrame:
    """The group's snapshot rows: its source tables joined on user_id (inner, as the warehouse's JOIN USING)."""
    first, *rest = group.sources
    frame = raw[first.name]
    for t in rest:
        frame = frame.join(raw[t.name], ENTITY, "inner")
    return frame.select(ENTITY, *(c.name for c in group.columns))


def load_drop(
    spark: SparkSession, lake_url: str, folder: Path, as_of: date, labels_as_of: date | None = None
) -> dict[str, int]:
    """Replace the month `as_of` of every raw and snapshot table with the drop's; returns row counts
    per table, as the warehouse load does (the labels under `labels_as_of`, an optional table only
    when the drop has its file; without it the month's old rows of that table are removed)."""
    days = {t.name: as_of for t in RAW_TABLES} | {LABELS.name: labels_as_of or as_of}
    staged: dict[str, tuple[str, date]] = {}
    try:
        written = {}
        for t in RAW_TABLES + tuple(t for t in OPTIONAL_TABLES if (folder / t.file).exists()):
            day = days.get(t.name, as_of)
            staged[t.name] = (lake.staging_url(lake_url, t.name, day), day)
            written[t.name] = write_staged(read_csv(spark, folder / t.file, t), staged[t.name][0])
        for g in FEATURE_GROUPS:
            staged[g.table] = (lake.staging_url(lake_url, g.table, as_of), as_of)
            written[g.table] = write_staged(snapshot_frame(g, written), staged[g.table][0])
        # Parquet footers hold the row counts: no second pass over the rows.
        counts = {name: frame.count() for name, frame in written.items()}
    except BaseException:
        for url, _ in staged.values():
            lake.remove_staged(spark, url)
        raise
    swap_all(spark, lake_url, staged)
    for t in OPTIONAL_TABLES:
        if t.name not in staged:
            lake.drop_partition(spark, lake_url, t.name, as_of)
    return counts


def swap_all(spark: SparkSession, lake_url: str, staged: dict[str, tuple[str, date]]) -> None:
    for name, (url, day) in staged.items():
        lake.swap_in(spark, url, lake.partition_url(lake_url, name, day))
    log.info("swapped in %d tables", len(staged))


def holds_month(spark: SparkSession, lake_url: str, as_of: date) -> bool:
    """Whether the lake holds the month of `as_of` in every snapshot table (the load's last tables)."""
    from pyspark.errors import AnalysisException

    for g in FEATURE_GROUPS:
        try:
            if read_table(spark, lake_url, g.table, [as_of]).limit(1).count() == 0:
                return False
        except AnalysisException:  # the table's folder does not exist yet
            return False
    return True


def read_table(spark: SparkSession, lake_url: str, table: str, as_of: Iterable[date] | None = None) -> DataFrame:
    """A lake table (every month, or the months given) with `as_of` as a date column."""
    from pyspark.sql import functions as F

    frame = spark.read.option("basePath", lake.table_url(lake_url, table)).parquet(lake.table_url(lake_url, table))
    if as_of is not None:
        frame = frame.where(F.col("as_of").isin([d for d in as_of]))
    return frame
