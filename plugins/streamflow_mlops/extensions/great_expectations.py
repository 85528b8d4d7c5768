"""Great Expectations 1.x internals used to merge per-chunk results (data/validation_merge.py) and
to take a Spark batch's samples in file order (data/validation_spark.py).

GE has no public way to judge an expectation on metrics computed elsewhere (the row count summed
over chunks) or to shape a map expectation's result from whole-file counts and samples; its own
`_validate` and formatter are used, so verdicts, percentages and sample lists are GE's arithmetic.
Its Spark engine takes a failed expectation's samples in no defined order (`filter().limit()`,
`_spark_map_condition_index`), where its pandas engine gives the first rows; the same query is run
here with an order. No upstream issue found (searched 2026-12).
"""

from __future__ import annotations

from typing import Any

UPSTREAM = "great_expectations==1.24.1"
PATCHED = (
    "great_expectations.expectations.expectation:_format_map_output",
    "great_expectations.expectations.core.expect_table_row_count_to_be_between:ExpectTableRowCountToBeBetween._validate",
    "great_expectations.expectations.core.expect_table_row_count_to_equal:ExpectTableRowCountToEqual._validate",
    "great_expectations.expectations.metrics.map_metric_provider.map_condition_auxilliary_methods:"
    "_spark_map_condition_index",
)


def judge_on_metrics(expectation: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    """An expectation's verdict (`success`, `result`) on metrics given, not computed from a batch."""
    return expectation._validate(metrics=metrics)


def format_map_output(result_format: dict[str, Any], unexpected_list: list, unexpected_index_list: list, **counts: Any):
    """GE's result of a map expectation, from whole-file counts and its first unexpected samples."""
    from great_expectations.expectations.expectation import _format_map_output
    from great_expectations.expectations.expectation_configuration import parse_result_format

    return _format_map_output(
        parse_result_format(dict(result_format)),
        unexpected_list=unexpected_list,
        unexpected_index_list=unexpected_index_list,
        **counts,
    )


def unexpected_rows_in_order(validator: Any, expectation: Any, order_by: str, limit: int) -> list[tuple[Any, Any]]:
    """The first `limit` rows a map expectation finds unexpected on a Spark batch, by `order_by`:
    (that column's value, the expectation column's value) pairs.

    GE's Spark engine samples unexpected rows with `filter(condition).limit(n)` and no order
    (`_spark_map_condition_index`), so its `partial_unexpected_list` is whichever rows the plan
    yields first: after the unique check's window (a shuffle) or a join, not the file's first
    ones as pandas gives them. This is that same query on GE's own condition and domain records,
    ordered first; Spark runs `orderBy().limit()` as a top-k per partition, so it stays bounded.
    """
    from great_expectations.compatibility.pyspark import functions as F
    from great_expectations.validator.metric_configuration import MetricConfiguration

    metric = expectation.map_metric
    dependencies = expectation.get_validation_dependencies(
        execution_engine=validator.execution_engine, runtime_configuration={"result_format": "BASIC"}
    )
    counted = dependencies.get_metric_configuration(f"{metric}.unexpected_count")
    condition, compute_kwargs, accessor_kwargs = validator.get_metric(
        MetricConfiguration(f"{metric}.condition", counted.metric_domain_kwargs, counted.metric_value_kwargs)
    )
    records = validator.execution_engine.get_domain_records(domain_kwargs={**compute_kwargs, **accessor_kwargs})
    column = accessor_kwargs["column"]
    unexpected = records.withColumn("__unexpected", condition).filter(F.col("__unexpected"))
    rows = unexpected.orderBy(order_by).select(order_by, column).limit(limit).collect()
    return [(row[0], row[1]) for row in rows]
