"""Validating a drop on Spark DataFrames, with the verdicts of `validation.validate_drop`.

The spark engine (STREAMFLOW_ENGINE=spark) runs the same committed suites with Great Expectations'
Spark engine, on the same two views of each file, and gives the same `DropValidation`: success,
reasons, row counts, and GE results with the same counts and samples in file order.

* **Readable first**: Spark's CSV reader differs from pandas on ragged rows, bad UTF-8 and quoting,
  so the streamed pandas read of `validation_chunks` decides whether a file is readable; a file it
  cannot read is judged as one with no rows, with its problem, as on the pandas engine.
* **Text view**: the file read by Spark with every column as text and pandas' column names (a
  first row longer than the header makes its first field pandas' index, as there), empty cells
  null, and each row's position in the file (`_row`), which GE never sees.
* **Values view**: numbers cast in Spark SQL where the text has the declared format
  (`validation.TYPE_REGEX`), typed as pandas types them (whole numbers stay integers unless a cell
  is null or out of range), orphan ids by a join against users.csv's distinct ids, and
  `user_id_in_other_chunk` all null: a file is one batch, GE's unique check sees all of it.
* **Samples**: GE's Spark engine takes unexpected samples in no order (after a shuffle, not the
  file's first rows); a failed map expectation's samples are taken again by row position
  (`extensions.great_expectations.unexpected_rows_in_order`) and shaped by GE's own formatter.

Rows stay on the executors: per file, one aggregate for the value types and, for a failed
expectation, its first 20 unexpected rows reach the driver. pyspark is imported inside functions only.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from streamflow_mlops.config.schema import ENTITY, USERS, Table
from streamflow_mlops.config.settings import get_settings
from streamflow_mlops.data.validation import (
    INT_REGEX,
    ORPHAN_COLUMN,
    TYPE_REGEX,
    USERS_ROW_COUNT,
    DropValidation,
    covers_users,
    drop_tables,
    drop_validation,
    file_check,
)
from streamflow_mlops.data.validation_chunks import (
    TEXT_VIEW,
    VALUES_VIEW,
    ChunkValidator,
    FileCheck,
    FileValidation,
    IdHashes,
    UnreadableFile,
    earliest_problem,
    file_sha256,
    first_rows_problem,
    judged_unreadable,
    reading_problem,
)
from streamflow_mlops.data.validation_merge import (
    IN_OTHER_CHUNK_COLUMN,
    RESULT_FORMAT,
    ChunkResult,
    merged_file_result,
)
from streamflow_mlops.extensions.great_expectations import format_map_output, unexpected_rows_in_order

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

ROW = "_row"
IMPLICIT_INDEX = "_index"
KNOWN = "_known"
COUNTS_ONLY = {**RESULT_FORMAT, "partial_unexpected_count": 0}


def readability_problem(path: Path, chunk_rows: int) -> UnreadableFile | None:
    """Why pandas cannot read the file, as the pandas engine reports it (streamed, no GE)."""
    return earliest_problem(reading_problem(path, chunk_rows), first_rows_problem(path, chunk_rows))


def pandas_header(path: Path) -> tuple[list[str], bool]:
    """The column names pandas gives the file, and whether its first field is pandas' implicit
    index (a first row longer than the header)."""
    head = pd.read_csv(path, nrows=1, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig")
    return [str(c) for c in head.columns], not isinstance(head.index, pd.RangeIndex)


def _fullmatch(text: Column, regex: str) -> Column:
    # Spark's rlike searches like re.search; the pandas engine parses where re.fullmatch matches.
    return text.rlike(f"^(?:{regex})\\z")


def read_text(spark: SparkSession, path: Path) -> DataFrame:
    """The CSV as text, as pandas reads it, with each row's position in the file (`_row`).

    multiLine: quoted fields may hold line breaks, as pandas reads them; it also makes a file one
    partition (read whole, streamed), so a row's position is its id within that partition."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    columns, implicit_index = pandas_header(path)
    read_as = [IMPLICIT_INDEX, *columns] if implicit_index else columns
    schema = StructType([StructField(c, StringType()) for c in read_as])
    frame = spark.read.csv(
        str(path), schema=schema, header=True, multiLine=True, escape='"', encoding="UTF-8", mode="PERMISSIVE"
    )
    if frame.rdd.getNumPartitions() > 1:
        raise RuntimeError(f"{path.name}: a multiLine CSV read gave {frame.rdd.getNumPartitions()} partitions")
    # pandas reads an empty cell, quoted or not, as null; Spark a quoted one as "".
    texts = [F.when(F.col(f"`{c}`") != "", F.col(f"`{c}`")).alias(c) for c in columns]
    return frame.select(F.monotonically_increasing_id().alias(ROW), *texts)


def value_types(rows: DataFrame, table: Table) -> dict[str, str]:
    """The Spark type of each numeric column of the values view, as pandas types it: integers when
    every cell is a well-formed whole number within int64, floats otherwise (one aggregate)."""
    from pyspark.sql import functions as F

    numeric = [c for c in table.columns if c.dtype in ("int", "float") and c.name in rows.columns]
    if not numeric:
        return {}
    checks = []
    for column in numeric:
        text = F.col(column.name)
        whole = _fullmatch(text, INT_REGEX) & F.expr(f"try_cast(`{column.name}` AS BIGINT)").isNotNull()
        checks.append(F.bool_and(F.coalesce(whole, F.lit(False))).alias(column.name))
    floats = rows.agg(*checks).first()
    return {c.name: "bigint" if floats[c.name] in (True, None) else "double" for c in numeric}


def values_view(rows: DataFrame, table: Table, user_ids: DataFrame) -> DataFrame:
    """The values view of `validation.values_view`, computed by Spark, with `_row`."""
    from pyspark.sql import functions as F

    types = value_types(rows, table)
    values = [
        F.when(_fullmatch(F.col(name), TYPE_REGEX[column.dtype]), F.expr(f"try_cast(`{name}` AS {types[name]})")).alias(
            name
        )
        for column in table.columns
        if (name := column.name) in types
    ]
    ids = F.col(ENTITY) if ENTITY in rows.columns else F.lit(None).cast("string")
    frame = rows.select(F.col(ROW), ids.alias(f"_{ENTITY}"), *values)
    if covers_users(table):
        known = user_ids.select(F.col(ENTITY).alias(f"_{ENTITY}"), F.lit(True).alias(KNOWN)).distinct()
        frame = frame.join(known, on=f"_{ENTITY}", how="left")
        frame = frame.withColumn(ORPHAN_COLUMN, F.when(F.col(KNOWN).isNull(), F.col(f"_{ENTITY}"))).drop(KNOWN)
    return frame.withColumn(IN_OTHER_CHUNK_COLUMN, F.lit(None).cast("string")).drop(f"_{ENTITY}")


class SparkValidator:
    """GE set up once per validation on Spark: one context, one Spark data source (the process's
    session), one asset and batch definition per view."""

    def __init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        # The views are persisted here, per file, and released when the file is done.
        source = self.context.data_sources.add_spark("streamflow_drop", persist=False)
        self.batch_definitions = {
            view: source.add_dataframe_asset(view).add_batch_definition_whole_dataframe("whole")
            for view in (TEXT_VIEW, VALUES_VIEW)
        }
        self._unreadable_judge: ChunkValidator | None = None

    def validate_view(self, view: str, suite: Any, params: dict[str, Any], rows: DataFrame) -> list[dict[str, Any]]:
        """GE's results of one view's suite on `rows` (its `_row` hidden), samples in file order."""
        definition = self.batch_definitions[view]
        batch = definition.get_batch(batch_parameters={"dataframe": rows.drop(ROW)})
        # GE's own samples are dropped (see `unexpected_rows_in_order`): not taking them saves a
        # Spark job per expectation.
        outcome = batch.validate(suite, result_format=COUNTS_ONLY, expectation_parameters=params)
        positioned = None
        shaped = []
        for result in outcome.to_json_dict()["results"]:
            if "unexpected_count" not in (result.get("result") or {}):
                shaped.append(result)
                continue
            samples: list[tuple[Any, Any]] = []
            if result["result"]["unexpected_count"]:
                if positioned is None:
                    request = definition.build_batch_request(batch_parameters={"dataframe": rows})
                    positioned = self.context.get_validator(batch_request=request)
                samples = unexpected_rows_in_order(
                    positioned, _expectation(result), ROW, RESULT_FORMAT["partial_unexpected_count"]
                )
            shaped.append({**result, **_in_file_order(result, samples)})
        return shaped

    def judge_unreadable(self, check: FileCheck, problem: UnreadableFile) -> FileValidation:
        """A file pandas cannot read is judged as on the pandas engine: as one with no rows."""
        if self._unreadable_judge is None:
            self._unreadable_judge = ChunkValidator()
        return judged_unreadable(check, self._unreadable_judge, problem)


def _expectation(result: dict[str, Any]) -> Any:
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    config = result["expectation_config"]
    kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
    return ExpectationConfiguration(type=config["type"], kwargs=kwargs).to_domain_obj()


def _in_file_order(result: dict[str, Any], samples: list[tuple[Any, Any]]) -> dict[str, Any]:
    """A map expectation's result with GE's counts and these samples, shaped by GE's formatter."""
    counts = result["result"]
    element_count = counts["element_count"]
    return format_map_output(
        RESULT_FORMAT,
        success=result["success"],
        element_count=element_count,
        nonnull_count=element_count - counts["missing_count"] if "missing_count" in counts else None,
        # Spark sums no rows to null where pandas counts 0: a header-only file has no unexpected row.
        unexpected_count=counts["unexpected_count"] or 0,
        unexpected_list=[value for _, value in samples],
        unexpected_index_list=[position for position, _ in samples],
    )


def validate_file_spark(
    check: FileCheck, table: Table, path: Path, validator: SparkValidator, spark: SparkSession, user_ids: DataFrame
) -> tuple[FileValidation, DataFrame | None]:
    """One CSV through its suite on Spark; also its text view (persisted; the caller unpersists it)."""
    problem = readability_problem(path, get_settings().chunk_rows)
    if problem is not None:
        return validator.judge_unreadable(check, problem), None
    rows = read_text(spark, path).persist()
    try:
        values = values_view(rows, table, user_ids).persist()
        try:
            results = validator.validate_view(TEXT_VIEW, check.suites[TEXT_VIEW], check.params, rows)
            results += validator.validate_view(VALUES_VIEW, check.suites[VALUES_VIEW], check.params, values)
        finally:
            values.unpersist()
    except BaseException:
        rows.unpersist()
        raise
    row_count = next(
        r["result"]["observed_value"]
        for r in results
        if r["expectation_config"]["type"] == "expect_table_row_count_to_be_between"
    )
    # One batch per file: no id is in another chunk, and the merge drops that check as on pandas.
    merged = merged_file_result(check.suite, check.file, [ChunkResult(results, {})])
    return FileValidation(merged, row_count, 1), rows


def validate_drop_spark(folder: Path, expectations_dir: Path, spark: SparkSession) -> DropValidation:
    """`validation.validate_drop` on Spark: every table's suite on the month folder's CSVs read by
    `spark`, the same outcome. Writes nothing."""
    from pyspark.sql.types import StringType, StructField, StructType

    started = time.perf_counter()
    tables = drop_tables(folder)
    sha256 = {t.file: file_sha256(folder / t.file) for t in tables}
    validator = SparkValidator()
    no_ids = spark.createDataFrame([], StructType([StructField(ENTITY, StringType())]))
    users_check = file_check(USERS, expectations_dir, {}, IdHashes())
    users, users_rows = validate_file_spark(users_check, USERS, folder / USERS.file, validator, spark, no_ids)
    user_ids = users_rows.select(ENTITY) if users_rows is not None and ENTITY in users_rows.columns else no_ids
    params = {USERS_ROW_COUNT: users.row_count}
    files = {USERS.name: users}
    try:
        for t in tables:
            if t.name != USERS.name:
                check = file_check(t, expectations_dir, params, IdHashes())
                files[t.name], rows = validate_file_spark(check, t, folder / t.file, validator, spark, user_ids)
                if rows is not None:
                    rows.unpersist()
    finally:
        if users_rows is not None:
            users_rows.unpersist()
    return drop_validation(folder, tables, files, sha256, time.perf_counter() - started, engine=" on Spark")
