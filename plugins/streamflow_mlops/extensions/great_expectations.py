"""Great Expectations 1.x internals used to merge per-chunk results (data/validation_merge.py).

GE has no public way to judge an expectation on metrics computed elsewhere (the row count summed
over chunks) or to shape a map expectation's result from whole-file counts and samples; its own
`_validate` and formatter are used, so verdicts, percentages and sample lists are GE's arithmetic.
No upstream issue found (searched 2026-12).
"""

from __future__ import annotations

from typing import Any

UPSTREAM = "great_expectations==1.24.1"
PATCHED = (
    "great_expectations.expectations.expectation:_format_map_output",
    "great_expectations.expectations.core.expect_table_row_count_to_be_between:ExpectTableRowCountToBeBetween._validate",
    "great_expectations.expectations.core.expect_table_row_count_to_equal:ExpectTableRowCountToEqual._validate",
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
