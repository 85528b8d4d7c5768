"""Merging the per-chunk GE results of a file into the result GE gives on the whole file.

Same keys, counts, percentages and first-20 samples in file order, so that reasons and reports do
not depend on the chunk size:

* column expectations: counts summed, samples concatenated in file order, then shaped by GE's own
  formatter, so percentages and `partial_unexpected_counts` are GE's arithmetic, not a copy of it;
* row counts: GE's own expectation judges the summed count; the column set is the header's, which
  every chunk shares;
* numbers: a chunk's values column is int64 where a whole file's may be float64 (one malformed
  cell elsewhere makes it so); samples are cast to the file's type, so `-1` reads `-1.0` as it does
  on the whole file;
* ids repeated across chunks: a chunk's values view flags the rows whose id occurs once in it but
  again in another chunk (`user_id_in_other_chunk`, expected null); the merge folds those rows into
  `expect_column_values_to_be_unique`, whose GE check sees one chunk. A duplicate straddling chunks
  is therefore reported as on the whole file: every row of the id counted, under the unique check,
  the id as the sample, in file order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from streamflow_mlops.config.schema import ENTITY
from streamflow_mlops.extensions.great_expectations import format_map_output, judge_on_metrics

IN_OTHER_CHUNK_COLUMN = f"{ENTITY}_in_other_chunk"
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 20}
UNIQUE = "expect_column_values_to_be_unique"
ROW_COUNTS = ("expect_table_row_count_to_be_between", "expect_table_row_count_to_equal")
HEADER_FACTS = ("expect_table_columns_to_match_set",)


@dataclass
class ChunkResult:
    """GE's results on one chunk (both views, as JSON dicts) and the dtypes of its values view."""

    results: list[dict[str, Any]]
    value_dtypes: dict[str, np.dtype]


def _config(result: dict[str, Any]) -> dict[str, Any]:
    return result["expectation_config"]


def _raised(result: dict[str, Any]) -> bool:
    """GE 1.x reports an error either flat or keyed by metric id."""
    info = result.get("exception_info") or {}
    return any(i.get("raised_exception") for i in [info, *(v for v in info.values() if isinstance(v, dict))])


def _file_dtype(column: str | None, chunks: list[ChunkResult]) -> np.dtype | None:
    dtypes = [c.value_dtypes[column] for c in chunks if column in c.value_dtypes]
    return np.result_type(*dtypes) if dtypes else None


def _in_file_dtype(values: list[Any], chunk_dtype: np.dtype | None, file_dtype: np.dtype | None) -> list[Any]:
    if chunk_dtype is None or file_dtype is None or chunk_dtype == file_dtype or not values:
        return values
    return np.asarray(values, dtype=chunk_dtype).astype(file_dtype).tolist()


def _samples(position: int, chunks: list[ChunkResult], file_dtype: np.dtype | None) -> tuple[list, list]:
    """(row index, value) samples of one expectation across chunks, in file order."""
    indexes, values = [], []
    for chunk in chunks:
        result = chunk.results[position]["result"]
        column = _config(chunk.results[position])["kwargs"].get("column")
        indexes += result.get("partial_unexpected_index_list") or []
        values += _in_file_dtype(
            result.get("partial_unexpected_list") or [], chunk.value_dtypes.get(column), file_dtype
        )
    return indexes, values


def _map_counts(position: int, chunks: list[ChunkResult]) -> dict[str, Any]:
    results = [c.results[position]["result"] for c in chunks]
    counted_missing = all("missing_count" in r for r in results)
    element_count = sum(r["element_count"] for r in results)
    return {
        "success": all(c.results[position]["success"] for c in chunks),
        "element_count": element_count,
        "nonnull_count": element_count - sum(r["missing_count"] for r in results) if counted_missing else None,
        "unexpected_count": sum(r["unexpected_count"] for r in results),
    }


def _formatted(counts: dict[str, Any], indexes: list[int], values: list[Any]) -> dict[str, Any]:
    """The result GE would report for these whole-file counts and first samples (GE's formatter)."""
    limit = RESULT_FORMAT["partial_unexpected_count"]
    return format_map_output(
        RESULT_FORMAT, unexpected_list=values[:limit], unexpected_index_list=indexes[:limit], **counts
    )


def _merged_map(position: int, chunks: list[ChunkResult]) -> dict[str, Any]:
    first = chunks[0].results[position]
    config = _config(first)
    if "mostly" in config["kwargs"]:
        raise ValueError(f"{config['type']}: `mostly` is judged on the whole file, not merged from chunks")
    column = config["kwargs"].get("column")
    view_dtype = _file_dtype(column, chunks) if (config.get("meta") or {}).get("view") == "values" else None
    indexes, values = _samples(position, chunks, view_dtype)
    return {**first, **_formatted(_map_counts(position, chunks), indexes, values)}


def _merged_row_count(position: int, chunks: list[ChunkResult]) -> dict[str, Any]:
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    first = chunks[0].results[position]
    kwargs = {k: v for k, v in _config(first)["kwargs"].items() if k != "batch_id"}
    expectation = ExpectationConfiguration(type=_config(first)["type"], kwargs=kwargs).to_domain_obj()
    rows = sum(c.results[position]["result"]["observed_value"] for c in chunks)
    return {**first, **judge_on_metrics(expectation, {"table.row_count": rows})}


def _merged_one(position: int, chunks: list[ChunkResult]) -> dict[str, Any]:
    first = chunks[0].results[position]
    kind = _config(first)["type"]
    raised = [c.results[position] for c in chunks if _raised(c.results[position])]
    if raised:
        return raised[0]
    if kind in HEADER_FACTS or len(chunks) == 1:
        return first
    if kind in ROW_COUNTS:
        return _merged_row_count(position, chunks)
    if "unexpected_count" in (first.get("result") or {}):
        return _merged_map(position, chunks)
    raise ValueError(f"no rule to merge {kind} across chunks")


def _is_in_other_chunk_check(result: dict[str, Any]) -> bool:
    return _config(result)["kwargs"].get("column") == IN_OTHER_CHUNK_COLUMN


def _folded_unique(unique: dict[str, Any], elsewhere: dict[str, Any]) -> dict[str, Any]:
    """The unique check of the whole file: rows repeated inside a chunk (GE's unique check) plus rows
    whose twin is in another chunk (GE's null check on `user_id_in_other_chunk`), disjoint."""
    if _raised(unique) or _raised(elsewhere) or not elsewhere["result"]["unexpected_count"]:
        return unique
    inside, across = unique["result"], elsewhere["result"]
    element_count = inside["element_count"]
    counts = {
        "success": False,
        "element_count": element_count,
        "nonnull_count": element_count - inside["missing_count"],
        "unexpected_count": inside["unexpected_count"] + across["unexpected_count"],
    }
    samples = sorted(
        zip(
            inside["partial_unexpected_index_list"] + across["partial_unexpected_index_list"],
            inside["partial_unexpected_list"] + across["partial_unexpected_list"],
            strict=True,
        ),
        key=lambda sample: sample[0],
    )
    return {**unique, **_formatted(counts, [i for i, _ in samples], [v for _, v in samples])}


def _fold_ids_in_other_chunks(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    elsewhere = [r for r in results if _is_in_other_chunk_check(r)]
    if not elsewhere:
        return results
    return [
        _folded_unique(r, elsewhere[0])
        if _config(r)["type"] == UNIQUE and _config(r)["kwargs"].get("column") == ENTITY
        else r
        for r in results
        if not _is_in_other_chunk_check(r)
    ]


def merged_file_result(suite: str, file: str, chunks: list[ChunkResult]) -> dict[str, Any]:
    """One file's GE result from its chunks' results, as validating the whole file gives it (pure)."""
    results = _fold_ids_in_other_chunks([_merged_one(i, chunks) for i in range(len(chunks[0].results))])
    return {
        "suite": suite,
        "file": file,
        "success": all(r["success"] for r in results),
        "statistics": {
            "evaluated_expectations": len(results),
            "successful_expectations": sum(1 for r in results if r["success"]),
        },
        "results": results,
    }
