"""The optional `contacts.csv` (issue 28): a drop without it is valid as before (same digest), a
good one is validated and counted, a broken one is rejected with GE's reasons, in chunks or whole."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from streamflow_mlops.config.schema import CONTACTS, OPTIONAL_TABLES, RAW_TABLES
from streamflow_mlops.data.ingest import drop_digest, file_digests
from streamflow_mlops.data.validation import build_suite, describe_reason, schema_disagreements, validate_drop
from streamflow_mlops.synthetic.generate import DropSpec, write_drop

EXPECTATIONS = Path(__file__).resolve().parents[2] / "expectations"
USERS = 200
SMALL_CHUNK = 48


@pytest.fixture(scope="module")
def plain_month(tmp_path_factory) -> Path:
    return write_drop(DropSpec(1, users=USERS), tmp_path_factory.mktemp("drop"))


def with_contacts(plain_month: Path, tmp_path: Path, lines: list[str]) -> Path:
    month = tmp_path / plain_month.name
    shutil.copytree(plain_month, month)
    (month / CONTACTS.file).write_text("\n".join(lines) + "\n")
    return month


def user_ids(month: Path, n: int) -> list[str]:
    return [line.split(",")[0] for line in (month / "users.csv").read_text().splitlines()[1 : n + 1]]


def test_the_committed_suite_is_the_generated_one_and_checks_no_user_coverage():
    suite = build_suite(CONTACTS)
    assert json.loads((EXPECTATIONS / "contacts.json").read_text()) == suite
    assert schema_disagreements(suite, CONTACTS) == []
    kinds = {e["type"] for e in suite["expectations"]}
    # A user reached last month may have churned out of this month's users.csv: no orphan or
    # row-count-equals-users check, unlike every required table but users.
    assert "expect_table_row_count_to_equal" not in kinds
    assert all(e["kwargs"].get("column") != "orphan_user_id" for e in suite["expectations"])
    assert OPTIONAL_TABLES == (CONTACTS,) and CONTACTS not in RAW_TABLES


@pytest.mark.slow
def test_a_drop_without_contacts_is_valid_and_keeps_its_digest(plain_month):
    validation = validate_drop(plain_month, EXPECTATIONS, chunk_rows=SMALL_CHUNK)
    assert validation.success and CONTACTS.name not in validation.row_counts
    assert set(file_digests(plain_month)) == {t.file for t in RAW_TABLES}


@pytest.mark.slow
@pytest.mark.parametrize("chunk_rows", [SMALL_CHUNK, 10 * USERS])
def test_good_contacts_are_validated_and_counted(plain_month, tmp_path, chunk_rows):
    reached = user_ids(plain_month, 120) + ["9999-QQQQQ"]  # one who has left since: allowed
    month = with_contacts(plain_month, tmp_path, ["user_id", *reached])
    validation = validate_drop(month, EXPECTATIONS, chunk_rows=chunk_rows)
    assert validation.success, [describe_reason(r) for r in validation.reasons]
    assert validation.row_counts[CONTACTS.name] == len(reached)
    assert CONTACTS.file in validation.sha256
    # The file is part of the drop's digest: a re-delivery with other contacts is a changed drop.
    assert drop_digest(file_digests(month), b"") != drop_digest(file_digests(plain_month), b"")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("lines", "expectation"),
    [
        (["user_id", "0001-ABCDE", "not-an-id"], "expect_column_values_to_match_regex"),
        (["customer", "0001-ABCDE"], "expect_table_columns_to_match_set"),
        (["user_id"], "expect_table_row_count_to_be_between"),
    ],
)
def test_broken_contacts_reject_the_drop_with_reasons(plain_month, tmp_path, lines, expectation):
    month = with_contacts(plain_month, tmp_path, lines)
    validation = validate_drop(month, EXPECTATIONS, chunk_rows=SMALL_CHUNK)
    assert not validation.success
    assert {(r["file"], r["expectation"]) for r in validation.reasons} == {(CONTACTS.file, expectation)}


@pytest.mark.slow
def test_a_contact_repeated_across_chunks_is_reported_as_on_the_whole_file(plain_month, tmp_path):
    reached = user_ids(plain_month, 100)
    month = with_contacts(plain_month, tmp_path, ["user_id", *reached, reached[3]])
    for chunk_rows in (SMALL_CHUNK, 10 * USERS):
        reasons = validate_drop(month, EXPECTATIONS, chunk_rows=chunk_rows).reasons
        assert [(r["file"], r["expectation"]) for r in reasons] == [
            (CONTACTS.file, "expect_column_values_to_be_unique")
        ]
