"""Both engines give the same verdicts: a generated month and every broken feed of the ingestion
tests, validated by pandas (`validate_drop`) and by Spark (`validate_drop_spark`), give the same
success, reasons, problems, row counts, digests and GE results, samples in file order included."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from streamflow_mlops.data.validation import describe_reason, validate_drop
from streamflow_mlops.data.validation_spark import validate_drop_spark
from streamflow_mlops.synthetic.generate import DropSpec, write_drop
from tests.integration.test_ingest import BREAKAGES, set_cell
from tests.unit.test_validation_chunks import CASES

EXPECTATIONS = Path(__file__).resolve().parents[2] / "expectations"
USERS = 200

# Every way a feed breaks that the ingestion tests know, but the manifest's (not validated by GE),
# and the chunk tests' cases that are about pandas' reader (the rows it checks, its implicit index).
FEED_BREAKAGES = [(name, damage) for name, damage, _ in BREAKAGES if not name.startswith("manifest_")]
READER_CASES = [
    (name, damage)
    for name, damage, _ in CASES
    if name in ("malformed_first_row", "malformed_line_at_a_chunk_start", "thrice_within_and_across_chunks")
]
# pandas' own float parser is an ulp off on this one; both engines must report the value Spark and
# PostgreSQL read (validation.parse_well_formed).
LONG_DECIMAL = ("long_decimal", lambda m: set_cell(m / "subscriptions.csv", "monthly_fee", 4, "-77540500.464756634"))
KINDS = [("good_month", lambda m: None), *FEED_BREAKAGES, *READER_CASES, LONG_DECIMAL]


@pytest.fixture(scope="module")
def good_month(tmp_path_factory) -> Path:
    return write_drop(DropSpec(1, users=USERS), tmp_path_factory.mktemp("drop"))


def raised(result: dict[str, Any]) -> bool:
    info = result.get("exception_info") or {}
    return any(i.get("raised_exception") for i in [info, *(v for v in info.values() if isinstance(v, dict))])


def comparable(results: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per file, each expectation's verdict and result; an error only as 'raised' (GE words a
    missing column differently on pandas and Spark, and reasons leave those out)."""
    out = {}
    for file, file_result in results.items():
        out[file] = [
            {
                "expectation": r["expectation_config"],
                "success": r["success"],
                "raised": raised(r),
                "result": r.get("result"),
            }
            for r in file_result["results"]
        ]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("damage", [k[1] for k in KINDS], ids=[k[0] for k in KINDS])
def test_spark_and_pandas_give_the_same_validation(damage, good_month, tmp_path, spark):
    month = shutil.copytree(good_month, tmp_path / good_month.name)
    damage(month)

    on_pandas = validate_drop(month, EXPECTATIONS)
    on_spark = validate_drop_spark(month, EXPECTATIONS, spark)

    assert [describe_reason(r) for r in on_spark.reasons] == [describe_reason(r) for r in on_pandas.reasons]
    assert (on_spark.success, on_spark.reasons) == (on_pandas.success, on_pandas.reasons)
    assert (on_spark.row_counts, on_spark.sha256, on_spark.problems) == (
        on_pandas.row_counts,
        on_pandas.sha256,
        on_pandas.problems,
    )
    assert comparable(on_spark.results) == comparable(on_pandas.results)


@pytest.mark.slow
def test_ingestion_validates_on_spark_when_the_engine_is_spark(good_month, spark, monkeypatch):
    from streamflow_mlops.config.settings import get_settings
    from streamflow_mlops.data import ingest

    def pandas_engine(*args, **kwargs):
        raise AssertionError("the pandas engine ran with STREAMFLOW_ENGINE=spark")

    monkeypatch.setattr(ingest, "validate_drop", pandas_engine)
    monkeypatch.setenv("STREAMFLOW_ENGINE", "spark")
    get_settings.cache_clear()
    try:
        validation = ingest.validate_drop_on_engine(good_month, EXPECTATIONS)
    finally:
        get_settings.cache_clear()
    assert validation.success and validation.row_counts["users"] == USERS
