"""The GE suites agree with the schema, and the quarantine split (results -> reasons) is right."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import LABEL, NET_SERVICES, RAW_TABLES, SUBSCRIPTIONS, USAGE, USERS
from streamflow_mlops.data.validation import (
    FLOAT_REGEX,
    INT_REGEX,
    ORPHAN_COLUMN,
    build_suite,
    describe_reason,
    failure_reasons,
    load_suite,
    rejection_message,
    report_html,
    schema_disagreements,
    suite_json,
    suite_path,
    values_view,
)
from streamflow_mlops.data.validation_chunks import IdHashes, UnreadableFile, file_sha256, text_chunks

EXPECTATIONS = Path(__file__).resolve().parents[2] / "expectations"


@pytest.mark.parametrize("table", RAW_TABLES, ids=lambda t: t.name)
def test_committed_suite_is_the_one_generated_from_the_schema(table):
    assert suite_path(table, EXPECTATIONS).read_text() == suite_json(table), (
        "run `python -m streamflow_mlops expectations` and commit expectations/"
    )


@pytest.mark.parametrize("table", RAW_TABLES, ids=lambda t: t.name)
def test_committed_suite_agrees_with_the_schema_and_loads_in_ge(table):
    committed = json.loads(suite_path(table, EXPECTATIONS).read_text())
    assert schema_disagreements(committed, table) == []
    assert len(load_suite(table, EXPECTATIONS).expectations) == len(committed["expectations"])


def test_a_suite_that_drifts_from_the_schema_is_caught():
    suite = build_suite(SUBSCRIPTIONS)
    dropped_range = copy.deepcopy(suite)
    dropped_range["expectations"] = [
        e
        for e in suite["expectations"]
        if not (e["type"] == "expect_column_values_to_be_between" and e["kwargs"]["column"] == "monthly_fee")
    ]
    assert any("monthly_fee: range" in p for p in schema_disagreements(dropped_range, SUBSCRIPTIONS))

    new_category = copy.deepcopy(suite)
    for e in new_category["expectations"]:
        if e["type"] == "expect_column_values_to_be_in_set":
            e["kwargs"]["value_set"].append("Satellite")
    assert any("net_service: categories" in p for p in schema_disagreements(new_category, SUBSCRIPTIONS))

    # a column added to the schema but not to the suite
    assert any("column set" in p for p in schema_disagreements(build_suite(USERS), SUBSCRIPTIONS))


def test_suite_checks_cover_every_declared_column():
    suite = build_suite(SUBSCRIPTIONS)
    kinds = {(e["type"], e["kwargs"].get("column")) for e in suite["expectations"]}
    assert ("expect_column_values_to_be_in_set", "net_service") in kinds
    assert ("expect_column_values_to_be_unique", "user_id") in kinds
    assert ("expect_column_values_to_be_null", ORPHAN_COLUMN) in kinds
    net = next(
        e
        for e in suite["expectations"]
        if e["kwargs"].get("column") == "net_service" and e["type"] == "expect_column_values_to_be_in_set"
    )
    assert net["kwargs"]["value_set"] == list(NET_SERVICES)
    label_sets = [
        e["kwargs"]["value_set"]
        for e in build_suite(RAW_TABLES[-1])["expectations"]
        if e["kwargs"].get("column") == LABEL and e["type"] == "expect_column_values_to_be_in_set"
    ]
    assert label_sets == [[0, 1]]


@pytest.mark.parametrize(
    ("regex", "good", "bad"),
    [
        (INT_REGEX, ["0", "12", "-3", "+4"], ["1.5", "n/a", "", " 1", "1e3", "inf"]),
        (FLOAT_REGEX, ["0", "1.5", "-2.", ".5", "1e-3", "+7.25E2"], ["inf", "-Infinity", "NaN", "nan", "1,5", "", "."]),
    ],
)
def test_type_formats_admit_only_finite_numbers(regex, good, bad):
    text = pd.Series(good + bad)
    assert text.str.fullmatch(regex).tolist() == [True] * len(good) + [False] * len(bad)


def test_values_view_nulls_malformed_cells_and_flags_orphans():
    text = pd.DataFrame(
        {
            "user_id": ["0001-AAAAA", "0002-BBBBB", "9999-ZZZZZ"],
            "watch_hours_30d": ["1.5", "inf", "2"],
            "avg_session_mins_7d": ["1", "2", "3"],
            "unique_devices_30d": ["1", "2.5", "3"],
            "skips_7d": ["n/a", "0", "1"],
            "rebuffer_events_7d": ["0", "0", "0"],
        }
    )
    values = values_view(text, USAGE, IdHashes.of(pd.Series(["0001-AAAAA", "0002-BBBBB"])))
    assert values["watch_hours_30d"].tolist()[::2] == [1.5, 2.0] and pd.isna(values["watch_hours_30d"][1])
    assert pd.isna(values["unique_devices_30d"][1]) and pd.isna(values["skips_7d"][0])
    assert values[ORPHAN_COLUMN].isna().tolist() == [True, True, False]
    assert values[ORPHAN_COLUMN][2] == "9999-ZZZZZ"


def test_text_chunks_keep_text_and_report_unreadable_files(tmp_path):
    bom = tmp_path / "users.csv"
    bom.write_bytes(b"\xef\xbb\xbfuser_id,months_active,paperless_billing\r\n0001-AAAAA,007,True\r\n0002-BBBBB,,x")
    (text,) = list(text_chunks(bom, 10))
    assert list(text.columns) == USERS.column_names
    assert text["months_active"][0] == "007" and pd.isna(text["months_active"][1])
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UnreadableFile, match="is empty"):
        list(text_chunks(tmp_path / "empty.csv", 10))
    with pytest.raises(UnreadableFile, match="is missing"):
        list(text_chunks(tmp_path / "nope.csv", 10))
    assert (
        file_sha256(bom) == hashlib.sha256(bom.read_bytes()).hexdigest() and file_sha256(tmp_path / "nope.csv") is None
    )


def result(kind, success, column=None, result=None, exception=None, **kwargs):
    kw = {"batch_id": "streamflow_drop-text", **({"column": column} if column else {}), **kwargs}
    return {
        "success": success,
        "expectation_config": {"type": kind, "kwargs": kw, "meta": {}},
        "result": result or {},
        "exception_info": exception or {"raised_exception": False},
    }


def file_result(*results):
    return {"success": all(r["success"] for r in results), "results": list(results)}


def test_failure_reasons_name_the_expectation_and_a_few_distinct_offenders():
    results = {
        "subscriptions.csv": file_result(
            result(
                "expect_table_columns_to_match_set",
                True,
                column_set=SUBSCRIPTIONS.column_names,
                result={"observed_value": SUBSCRIPTIONS.column_names},
            ),
            result(
                "expect_column_values_to_be_between",
                False,
                "monthly_fee",
                min_value=0,
                max_value=1000,
                result={
                    "unexpected_count": 9,
                    "element_count": 100,
                    "partial_unexpected_list": [-1, -1, -2, -3, -4, -5, -6, -7, -8],
                },
            ),
            result("expect_column_values_to_be_unique", True, "user_id"),
        ),
        "labels.csv": file_result(
            result("expect_table_row_count_to_equal", False, value=100, result={"observed_value": 97})
        ),
    }
    reasons = failure_reasons(results, {})
    assert [(r["file"], r["expectation"]) for r in reasons] == [
        ("subscriptions.csv", "expect_column_values_to_be_between"),
        ("labels.csv", "expect_table_row_count_to_equal"),
    ]
    assert reasons[0]["sample"] == [-1, -2, -3, -4, -5] and reasons[0]["unexpected_count"] == 9
    assert "batch_id" not in reasons[0]["kwargs"]
    lines = [describe_reason(r) for r in reasons]
    assert lines[0] == (
        "subscriptions.csv: expect_column_values_to_be_between(monthly_fee, min_value=0, "
        "max_value=1000) failed on 9 of 100 rows, e.g. -1, -2, -3, -4, -5"
    )
    assert lines[1] == "labels.csv: expect_table_row_count_to_equal(value=100) failed: observed 97"
    message = rejection_message(Month(4), reasons, Path("/q/month_004-x"))
    assert message.splitlines()[0] == "month_004 rejected: 2 failed expectation(s)"
    assert lines[0] in message and message.endswith("quarantined to /q/month_004-x")


def test_a_missing_column_is_reported_once_and_an_unreadable_file_once():
    results = {
        "usage_agg_30d.csv": file_result(
            result(
                "expect_table_columns_to_match_set",
                False,
                column_set=USAGE.column_names,
                result={"observed_value": [c for c in USAGE.column_names if c != "skips_7d"]},
            ),
            result(
                "expect_column_values_to_not_be_null",
                False,
                "skips_7d",
                exception={"m1": {"raised_exception": True, "exception_message": "column not found"}},
            ),
            result("expect_column_values_to_match_regex", False, "skips_7d", regex=INT_REGEX),
            result(
                "expect_column_values_to_be_between",
                False,
                "watch_hours_30d",
                min_value=0,
                max_value=720,
                exception={"raised_exception": True, "exception_message": "boom\ntraceback"},
            ),
        ),
        "labels.csv": file_result(
            result("expect_table_row_count_to_be_between", False, min_value=1, result={"observed_value": 0})
        ),
    }
    reasons = failure_reasons(results, {"labels.csv": "labels.csv is empty (no header)"})
    assert [describe_reason(r) for r in reasons] == [
        "labels.csv: file_readable: labels.csv is empty (no header)",
        "usage_agg_30d.csv: expect_table_columns_to_match_set failed: missing ['skips_7d'], unexpected []",
        "usage_agg_30d.csv: expect_column_values_to_be_between(watch_hours_30d, min_value=0, max_value=720): boom",
    ]


def test_passing_results_give_no_reasons_and_the_report_escapes_values():
    ok = {"users.csv": file_result(result("expect_column_values_to_be_unique", True, "user_id"))}
    assert failure_reasons(ok, {}) == []
    bad = {
        "subscriptions.csv": file_result(
            result(
                "expect_column_values_to_be_in_set",
                False,
                "net_service",
                value_set=list(NET_SERVICES),
                result={"unexpected_count": 1, "element_count": 3, "partial_unexpected_list": ["<script>"]},
            )
        )
    }
    html = report_html(Month(2), failure_reasons(bad, {}), bad)
    assert "<script>" not in html and "&lt;script&gt;" in html and "rejected" in html
