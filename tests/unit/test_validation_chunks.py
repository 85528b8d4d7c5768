"""Validating in chunks gives the whole file's outcome: a generated month and broken batches whose
fault sits in a later chunk than its twin, its user or its file's start, validated a few dozen rows
at a time and in one chunk, give the same verdict, reasons, results, row counts and digests."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamflow_mlops.config.schema import RAW_TABLES
from streamflow_mlops.data.validation import describe_reason, validate_drop
from streamflow_mlops.data.validation_chunks import (
    IdHashes,
    earliest_problem,
    first_rows_problem,
    hash_ids,
    in_other_chunk,
    reading_problem,
    repeated_ids,
    text_chunks,
)
from streamflow_mlops.synthetic.generate import DropSpec, write_drop

EXPECTATIONS = Path(__file__).resolve().parents[2] / "expectations"
USERS = 200
# users.csv spans five chunks: rows 0-47, 48-95, 96-143, 144-191, 192-199.
SMALL_CHUNK = 48
WHOLE_FILE = 10 * USERS


@pytest.fixture(scope="module")
def good_month(tmp_path_factory) -> Path:
    return write_drop(DropSpec(0, users=USERS), tmp_path_factory.mktemp("drop"))


def edit_lines(path: Path, edit: Callable[[list[str]], None]) -> None:
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")


def cell(path: Path, column: str, row: int) -> str:
    lines = path.read_text().splitlines()
    return lines[row + 1].split(",")[lines[0].split(",").index(column)]


def set_cell(path: Path, column: str, row: int, value: str) -> None:
    def edit(lines: list[str]) -> None:
        cells = lines[row + 1].split(",")
        cells[lines[0].split(",").index(column)] = value
        lines[row + 1] = ",".join(cells)

    edit_lines(path, edit)


def append_to_row(path: Path, row: int, text: str) -> None:
    def edit(lines: list[str]) -> None:
        lines[row + 1] += text

    edit_lines(path, edit)


def duplicate_in_later_chunk(m: Path) -> None:
    set_cell(m / "users.csv", "user_id", 150, cell(m / "users.csv", "user_id", 3))


def thrice_within_and_across_chunks(m: Path) -> None:
    twin = cell(m / "labels.csv", "user_id", 10)
    set_cell(m / "labels.csv", "user_id", 20, twin)
    set_cell(m / "labels.csv", "user_id", 170, twin)


def not_utf8_in_later_chunk(m: Path) -> None:
    lines = (m / "subscriptions.csv").read_bytes().split(b"\n")
    lines[171] = b"\xff" + lines[171]
    (m / "subscriptions.csv").write_bytes(b"\n".join(lines))


def number_formats_differ_by_chunk(m: Path) -> None:
    # One malformed cell makes the whole file's months_active float: -3 must read -3.0 in every chunk.
    set_cell(m / "users.csv", "months_active", 5, "-3")
    set_cell(m / "users.csv", "months_active", 150, "x")


def short_row_in_later_chunk(m: Path) -> None:
    def edit(lines: list[str]) -> None:
        lines[161] = lines[161].rsplit(",", 1)[0]

    edit_lines(m / "users.csv", edit)


# (id, how to break the month, a line the reasons must hold; None: the month passes)
CASES: list[tuple[str, Callable[[Path], None], str | None]] = [
    ("good_month", lambda m: None, None),
    ("duplicate_in_later_chunk", duplicate_in_later_chunk, "expect_column_values_to_be_unique(user_id) failed on 2 of"),
    ("thrice_within_and_across_chunks", thrice_within_and_across_chunks, "be_unique(user_id) failed on 3 of 200 rows"),
    (
        "orphan_in_later_chunk",
        lambda m: set_cell(m / "usage_agg_30d.csv", "user_id", 180, "0000-ZZZZZ"),
        "usage_agg_30d.csv: expect_column_values_to_be_null(orphan_user_id) failed on 1 of 200 rows, e.g. '0000-ZZZZZ'",
    ),
    (
        "malformed_line_in_later_chunk",
        lambda m: append_to_row(m / "users.csv", 150, ",extra"),
        "users.csv is not a valid UTF-8 CSV: Error tokenizing data. C error: Expected 3 fields in line 152, saw 4",
    ),
    (
        # The first row of a chunk, which pandas' C parser does not check (pandas issue #11569).
        "malformed_line_at_a_chunk_start",
        lambda m: append_to_row(m / "users.csv", 2 * SMALL_CHUNK, ",extra"),
        "users.csv is not a valid UTF-8 CSV: Error tokenizing data. C error: Expected 3 fields in line 98, saw 4",
    ),
    (
        "first_of_two_malformed_lines_at_a_chunk_start",
        lambda m: (
            append_to_row(m / "users.csv", 2 * SMALL_CHUNK, ",extra"),
            append_to_row(m / "users.csv", 120, ",x,y"),
        ),
        "C error: Expected 3 fields in line 98, saw 4",
    ),
    (
        # pandas takes the ids for an index, as on the whole file: every check of user_id sees months.
        "malformed_first_row",
        lambda m: append_to_row(m / "users.csv", 0, ",extra"),
        "users.csv: expect_column_values_to_match_regex(user_id, regex='^[0-9]{4}-[A-Z]{5}$') failed on 200 of 200",
    ),
    ("not_utf8_in_later_chunk", not_utf8_in_later_chunk, "subscriptions.csv is not a valid UTF-8 CSV: 'utf-8' codec"),
    (
        "number_formats_differ_by_chunk",
        number_formats_differ_by_chunk,
        "max_value=600.0) failed on 1 of 200 rows, e.g. -3.0",
    ),
    ("short_row_in_later_chunk", short_row_in_later_chunk, "not_be_null(paperless_billing) failed on 1 of 200 rows"),
    (
        "header_only",
        lambda m: edit_lines(m / "labels.csv", lambda lines: lines.__delitem__(slice(1, None))),
        "labels.csv: expect_table_row_count_to_be_between(min_value=1) failed: observed 0",
    ),
    ("empty_file", lambda m: (m / "payments_agg_90d.csv").write_text(""), "payments_agg_90d.csv is empty (no header)"),
    ("missing_file", lambda m: (m / "support_agg_90d.csv").unlink(), "support_agg_90d.csv is missing"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("damage", "named"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_chunked_validation_gives_the_whole_files_outcome(damage, named, good_month, tmp_path):
    month = shutil.copytree(good_month, tmp_path / good_month.name)
    damage(month)

    whole = validate_drop(month, EXPECTATIONS, chunk_rows=WHOLE_FILE)
    chunked = validate_drop(month, EXPECTATIONS, chunk_rows=SMALL_CHUNK)

    assert (chunked.success, chunked.reasons) == (whole.success, whole.reasons)
    assert (chunked.row_counts, chunked.sha256, chunked.problems) == (whole.row_counts, whole.sha256, whole.problems)
    assert chunked.results == whole.results
    lines = [describe_reason(r) for r in chunked.reasons]
    if named is None:
        assert chunked.success and lines == [] and chunked.row_counts == {t.name: USERS for t in RAW_TABLES}
    else:
        assert not chunked.success and any(named in line for line in lines), lines


@pytest.mark.slow
def test_a_duplicate_across_chunks_is_reported_as_on_the_whole_file(good_month, tmp_path):
    month = shutil.copytree(good_month, tmp_path / good_month.name)
    duplicate_in_later_chunk(month)
    twin = cell(month / "users.csv", "user_id", 3)

    reasons = validate_drop(month, EXPECTATIONS, chunk_rows=SMALL_CHUNK).reasons

    users = [describe_reason(r) for r in reasons if r["file"] == "users.csv"]
    assert users == [f"users.csv: expect_column_values_to_be_unique(user_id) failed on 2 of 200 rows, e.g. {twin!r}"]
    # The row it replaced is missing from users.csv, so every other table has one orphan.
    assert sum("orphan_user_id" in describe_reason(r) for r in reasons) == len(RAW_TABLES) - 1


@pytest.mark.slow
def test_digests_are_those_of_the_files_bytes(good_month):
    validation = validate_drop(good_month, EXPECTATIONS, chunk_rows=SMALL_CHUNK)
    assert validation.sha256 == {
        t.file: hashlib.sha256((good_month / t.file).read_bytes()).hexdigest() for t in RAW_TABLES
    }
    assert validation.success and validation.row_counts["users"] == USERS


def test_id_hashes_find_ids_and_never_nulls():
    users = IdHashes.of(pd.Series(["0001-AAAAA", "0002-BBBBB", None], dtype=object))
    rows = pd.Series(["0002-BBBBB", "9999-ZZZZZ", None, "0001-AAAAA"], dtype=object)
    assert len(users) == 2 and users.contains(rows).tolist() == [True, False, False, True]
    assert IdHashes().contains(rows).tolist() == [False] * 4


def test_ids_repeated_in_another_chunk_are_flagged_once_per_row_and_never_with_ges_own():
    file_ids = pd.Series(["a", "b", "a", "c", "c", "d"], dtype=object)
    repeated = repeated_ids(IdHashes.of(file_ids))
    assert sorted(repeated.hashes.tolist()) == sorted(hash_ids(pd.Series(["a", "c"], dtype=object)).tolist())
    # A chunk holding one "a" (its twin elsewhere) and both "c"s (GE's unique check sees those).
    chunk = pd.Series(["a", "c", "c", "d", None], dtype=object)
    flagged = in_other_chunk(chunk, repeated)
    assert flagged.tolist()[:1] == ["a"] and flagged[1:].isna().all()


def test_every_row_but_the_first_is_checked_for_extra_fields(tmp_path):
    path = tmp_path / "users.csv"
    rows = [f"{i:04d}-ABCDE,{i},True" for i in range(20)]
    for bad in range(1, 20):
        path.write_text(
            "\n".join(["user_id,months_active,paperless_billing", *rows[:bad], rows[bad] + ",x", *rows[bad + 1 :]])
        )
        problem = earliest_problem(reading_problem(path, 4), first_rows_problem(path, 4))
        assert problem is not None and f"Expected 3 fields in line {bad + 2}, saw 4" in str(problem), bad


def test_text_chunks_number_rows_across_chunks_and_keep_text(tmp_path):
    path = tmp_path / "users.csv"
    path.write_bytes(b"\xef\xbb\xbfuser_id,months_active\r\n" + b"".join(b"0001-AAAAA,%03d\r\n" % i for i in range(10)))
    chunks = list(text_chunks(path, 4))
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert np.concatenate([c.index for c in chunks]).tolist() == list(range(10))
    assert list(chunks[0].columns) == ["user_id", "months_active"] and chunks[2]["months_active"].tolist() == [
        "008",
        "009",
    ]
