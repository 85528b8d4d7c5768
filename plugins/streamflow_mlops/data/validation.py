"""Great Expectations for the monthly CSVs: suites derived from the schema, and validation of a drop.

Each raw CSV has one suite (`expectations/<table>.json`), generated from `schema.RAW_TABLES` (and
`OPTIONAL_TABLES`: `contacts.csv`, validated when a drop has it) by `build_suite` and loaded at run
time. A file is read as text first, so a wrong type is reported by an expectation (with the
offending text) instead of crashing the CSV parser. Each suite is evaluated on two views of the
same file:

* the **text** view (the file as read): columns, row counts, nulls, unique keys, type formats
  (regexes that admit only finite numbers), categories;
* the **values** view (text parsed to numbers where it has the declared format, null where
  not, so a bad cell is reported once, by its format check): ranges, the label set, and the
  cross-table key check.

Cross-table checks scale to 1M users by hashing, not by handing GE a million-value `value_set`
(measured: ~3 minutes for one such expectation): the values view carries `orphan_user_id`, the
row's user_id when it is missing from users.csv and null otherwise, and the suite expects it to
be null; the row count of every table must equal users.csv's (suite parameter `users_row_count`).
With unique keys on both sides, the two together say every table covers exactly the same users.

A file is validated in chunks of `STREAMFLOW_CHUNK_ROWS` rows, so memory is bounded by the chunk,
not the month: GE runs on each chunk and `validation_chunks` merges the chunks' results
into the result of the whole file, reasons included. users.csv goes first, as the orphan check
needs all its ids (kept as hashes). Ids repeated across chunks need what only the whole file
knows, so a file whose ids repeat is validated a second time, knowing which ids repeat: rare (a
broken batch), and cheaper than a second GE pass over every file. Before GE, each file is read
once more with its chunks one row later, for the rows pandas does not check at chunk starts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import (
    ENTITY,
    LABEL,
    OPTIONAL_TABLES,
    RAW_TABLES,
    USER_ID_REGEX,
    USERS,
    Column,
    Table,
)
from streamflow_mlops.config.settings import get_settings
from streamflow_mlops.data.validation_chunks import (
    TEXT_VIEW,
    VALUES_VIEW,
    ChunkValidator,
    FileCheck,
    IdHashes,
    file_sha256,
    in_other_chunk,
    validate_file,
)
from streamflow_mlops.data.validation_merge import IN_OTHER_CHUNK_COLUMN

log = logging.getLogger(__name__)

# Formats that PostgreSQL's COPY parses into the declared column type; `inf`, `nan` and empty
# cells fail them on purpose: no feature in this warehouse may be non-finite or missing.
INT_REGEX = r"^[+-]?[0-9]+$"
FLOAT_REGEX = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
BOOL_REGEX = r"^(?:True|False|true|false|TRUE|FALSE|t|f|1|0)$"
TYPE_REGEX = {"int": INT_REGEX, "float": FLOAT_REGEX, "bool": BOOL_REGEX}

ORPHAN_COLUMN = f"orphan_{ENTITY}"
USERS_ROW_COUNT = "users_row_count"
SUITE_NOTE = "Generated from streamflow_mlops.config.schema by `python -m streamflow_mlops expectations`; do not edit."


def _expectation(kind: str, view: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs, "meta": {"view": view}}


def _column_expectations(column: Column) -> list[dict[str, Any]]:
    name = column.name
    out = [_expectation("expect_column_values_to_not_be_null", TEXT_VIEW, column=name)]
    if column.dtype in TYPE_REGEX:
        out.append(
            _expectation("expect_column_values_to_match_regex", TEXT_VIEW, column=name, regex=TYPE_REGEX[column.dtype])
        )
    if column.allowed is not None:
        out.append(
            _expectation("expect_column_values_to_be_in_set", TEXT_VIEW, column=name, value_set=list(column.allowed))
        )
    if column.min_value is not None or column.max_value is not None:
        out.append(
            _expectation(
                "expect_column_values_to_be_between",
                VALUES_VIEW,
                column=name,
                min_value=column.min_value,
                max_value=column.max_value,
            )
        )
    if name == LABEL:
        out.append(_expectation("expect_column_values_to_be_in_set", VALUES_VIEW, column=name, value_set=[0, 1]))
    return out


def covers_users(table: Table) -> bool:
    """Whether a table must hold exactly users.csv's users: every raw table but users itself; not an
    optional one (`contacts` names the few users a campaign reached, some of whom may have left)."""
    return table.name != USERS.name and table in RAW_TABLES


def build_suite(table: Table) -> dict[str, Any]:
    """The GE suite of one raw CSV, as the JSON dict committed under `expectations/` (pure)."""
    expectations = [
        _expectation("expect_table_columns_to_match_set", TEXT_VIEW, column_set=table.column_names, exact_match=True),
        _expectation("expect_table_row_count_to_be_between", TEXT_VIEW, min_value=1, max_value=None),
        _expectation("expect_column_values_to_not_be_null", TEXT_VIEW, column=ENTITY),
        _expectation("expect_column_values_to_match_regex", TEXT_VIEW, column=ENTITY, regex=USER_ID_REGEX),
        _expectation("expect_column_values_to_be_unique", TEXT_VIEW, column=ENTITY),
        _expectation("expect_column_values_to_be_null", VALUES_VIEW, column=IN_OTHER_CHUNK_COLUMN),
    ]
    if covers_users(table):
        expectations += [
            _expectation("expect_table_row_count_to_equal", TEXT_VIEW, value={"$PARAMETER": USERS_ROW_COUNT}),
            _expectation("expect_column_values_to_be_null", VALUES_VIEW, column=ORPHAN_COLUMN),
        ]
    for column in table.columns:
        expectations += _column_expectations(column)
    return {
        "name": table.name,
        "expectations": expectations,
        "meta": {"file": table.file, "notes": SUITE_NOTE},
    }


def suite_path(table: Table, expectations_dir: Path) -> Path:
    return expectations_dir / f"{table.name}.json"


def suite_json(table: Table) -> str:
    return json.dumps(build_suite(table), indent=2) + "\n"


def write_suites(expectations_dir: Path) -> list[Path]:
    """(Re)generate every suite JSON from the schema; returns the paths written."""
    expectations_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in RAW_TABLES + OPTIONAL_TABLES:
        path = suite_path(t, expectations_dir)
        path.write_text(suite_json(t))
        paths.append(path)
    return paths


def load_suite(table: Table, expectations_dir: Path):
    """The committed suite of `table` as a `gx.ExpectationSuite`."""
    import great_expectations as gx

    return gx.ExpectationSuite(**json.loads(suite_path(table, expectations_dir).read_text()))


def parse_well_formed(raw: pd.Series, dtype: str) -> pd.Series:
    """Numbers where the text has the declared format, null elsewhere (pure).

    The format is checked once per distinct text, not per row: a month's counts, fees and hours
    repeat, so 1M rows hold at most tens of thousands of distinct texts, and Python's regex per
    row was the biggest cost of validating a 1M-user drop.
    """
    distinct = pd.Series(raw.dropna().unique(), dtype=object)
    well_formed = distinct[distinct.str.fullmatch(TYPE_REGEX[dtype]).astype(bool)]
    parsed = pd.to_numeric(well_formed, errors="coerce")
    if parsed.dtype.kind == "f":
        # pandas' fast parser is off by an ulp on some long decimals (77540500.464756634) and on
        # whole numbers beyond uint64; Python's float, like PostgreSQL's and Spark's, rounds right.
        parsed = well_formed.map(float).astype("float64")
    numbers = pd.Series(parsed.to_numpy(), index=well_formed.to_numpy())
    return pd.to_numeric(raw.map(numbers))


def values_view(text: pd.DataFrame, table: Table, user_ids: IdHashes, repeated: IdHashes | None = None) -> pd.DataFrame:
    """Text parsed to the declared types; cells without the declared format become null (pure).

    Key facts no single chunk holds come as columns GE expects null: `orphan_user_id`, against
    users.csv's ids (`user_ids`, their hashes or the ids), and `user_id_in_other_chunk`, against
    the ids `repeated` in the file (when a first pass over it found any)."""
    values = {}
    for column in table.columns:
        # Booleans and categories have no value checks; their text checks say it all.
        if column.name not in text or column.dtype not in ("int", "float"):
            continue
        values[column.name] = parse_well_formed(text[column.name], column.dtype)
    frame = pd.DataFrame(values, index=text.index)
    ids = text[ENTITY] if ENTITY in text else pd.Series(pd.NA, index=text.index, dtype=object)
    if covers_users(table):
        frame[ORPHAN_COLUMN] = ids.where(~user_ids.contains(ids) & ids.notna().to_numpy())
    frame[IN_OTHER_CHUNK_COLUMN] = in_other_chunk(ids, repeated or IdHashes())
    return frame


@dataclass
class DropValidation:
    """The outcome of validating a month folder: GE results per file and anything unreadable."""

    success: bool
    results: dict[str, dict[str, Any]]
    problems: dict[str, str]
    sha256: dict[str, str | None]
    row_counts: dict[str, int]
    seconds: float = 0.0
    reasons: list[dict[str, Any]] = field(default_factory=list)


def _suite_for_view(suite, view: str):
    import great_expectations as gx

    return gx.ExpectationSuite(
        name=f"{suite.name}.{view}",
        expectations=[e.copy() for e in suite.expectations if (e.meta or {}).get("view", TEXT_VIEW) == view],
    )


def file_check(table: Table, expectations_dir: Path, params: dict[str, Any], user_ids: IdHashes) -> FileCheck:
    """How one table's file is validated: its committed suite split by view, GE's parameters, and
    its values view against users.csv's ids."""
    suite = load_suite(table, expectations_dir)
    return FileCheck(
        table.name,
        table.file,
        {view: _suite_for_view(suite, view) for view in (TEXT_VIEW, VALUES_VIEW)},
        params,
        lambda text, repeated: values_view(text, table, user_ids, repeated),
    )


def drop_tables(folder: Path) -> tuple[Table, ...]:
    """The tables a drop holds: every raw table, and each optional one whose file is there."""
    return RAW_TABLES + tuple(t for t in OPTIONAL_TABLES if (folder / t.file).exists())


def validate_drop(folder: Path, expectations_dir: Path, chunk_rows: int | None = None) -> DropValidation:
    """Run every table's suite on the month folder's CSVs (an optional table's when its file is
    there), `chunk_rows` rows at a time (default: the `STREAMFLOW_CHUNK_ROWS` setting); the outcome
    does not depend on the chunk size. Writes nothing."""
    import time

    started = time.perf_counter()
    chunk_rows = chunk_rows if chunk_rows is not None else get_settings().chunk_rows
    if chunk_rows < 2:
        raise ValueError(f"chunk_rows={chunk_rows}: two rows at least, or no read checks a row's width")
    # Digests first: a file changed while it is validated then differs from its digest at load time.
    tables = drop_tables(folder)
    sha256 = {t.file: file_sha256(folder / t.file) for t in tables}
    validator = ChunkValidator()
    users_check = file_check(USERS, expectations_dir, {}, IdHashes())
    users, user_ids = validate_file(users_check, folder / USERS.file, validator, chunk_rows)
    params = {USERS_ROW_COUNT: users.row_count}
    files = {USERS.name: users}
    for t in tables:
        if t.name != USERS.name:
            check = file_check(t, expectations_dir, params, user_ids)
            files[t.name], _ = validate_file(check, folder / t.file, validator, chunk_rows)
    return drop_validation(folder, tables, files, sha256, time.perf_counter() - started)


def drop_validation(
    folder: Path,
    tables: tuple[Table, ...],
    files: dict[str, Any],
    sha256: dict[str, str | None],
    seconds: float,
    engine: str = "",
) -> DropValidation:
    """The drop's outcome from its files' (FileValidation per table name), with its failure reasons."""
    results = {t.file: files[t.name].result for t in tables}
    problems = {t.file: files[t.name].problem for t in tables if files[t.name].problem}
    validation = DropValidation(
        success=not problems and all(r["success"] for r in results.values()),
        results=results,
        problems=problems,
        sha256=sha256,
        row_counts={t.name: files[t.name].row_count for t in tables},
        seconds=seconds,
    )
    validation.reasons = failure_reasons(results, problems)
    log.info("validated %s%s in %.1fs: %s", folder, engine, seconds, "pass" if validation.success else "FAIL")
    return validation


def _missing_columns(file_result: dict[str, Any]) -> set[str]:
    for r in file_result["results"]:
        config = r["expectation_config"]
        if config["type"] == "expect_table_columns_to_match_set":
            observed = set((r.get("result") or {}).get("observed_value") or [])
            return set(config["kwargs"]["column_set"]) - observed
    return set()


def _distinct(values: list[Any], limit: int = 5) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if v not in seen:
            seen.append(v)
        if len(seen) == limit:
            break
    return seen


def _exception_message(info: dict[str, Any]) -> str | None:
    """GE 1.x reports errors either flat or keyed by metric id; the first message, one line."""
    candidates = [info] + [v for v in info.values() if isinstance(v, dict)]
    for candidate in candidates:
        if candidate.get("raised_exception"):
            return (candidate.get("exception_message") or "could not be evaluated").splitlines()[0]
    return None


def failure_reasons(results: dict[str, dict[str, Any]], problems: dict[str, str]) -> list[dict[str, Any]]:
    """Which expectations failed, as short JSON records with a few offending values (pure).

    An unreadable file gives one reason, not one per expectation; a column expectation that
    could not run because its column is missing is left out, as the column-set expectation
    already names the missing column.
    """
    reasons: list[dict[str, Any]] = [
        {"file": f, "expectation": "file_readable", "detail": p} for f, p in problems.items()
    ]
    for file, file_result in results.items():
        if file in problems:
            continue
        missing = _missing_columns(file_result)
        for r in file_result["results"]:
            if r["success"]:
                continue
            config = r["expectation_config"]
            kwargs = {k: v for k, v in config["kwargs"].items() if k not in ("batch_id", "column")}
            column = config["kwargs"].get("column")
            if column in missing:
                continue
            detail = _exception_message(r.get("exception_info") or {})
            if detail:
                reasons.append(
                    {"file": file, "expectation": config["type"], "column": column, "kwargs": kwargs, "detail": detail}
                )
                continue
            result = r.get("result") or {}
            reason = {"file": file, "expectation": config["type"], "column": column, "kwargs": kwargs}
            if "unexpected_count" in result:
                reason["unexpected_count"] = result["unexpected_count"]
                reason["element_count"] = result.get("element_count")
                reason["sample"] = _distinct(result.get("partial_unexpected_list") or [])
            if "observed_value" in result:
                reason["observed_value"] = result["observed_value"]
            reasons.append(reason)
    return reasons


def describe_reason(reason: dict[str, Any]) -> str:
    """One line a person can act on, e.g. `subscriptions.csv: expect_column_values_to_be_between
    (monthly_fee, min_value=0, max_value=1000) failed on 35 of 7043 rows, e.g. -64.3, -20.1` (pure)."""
    args = [reason["column"]] if reason.get("column") else []
    args += [f"{k}={v!r}" for k, v in (reason.get("kwargs") or {}).items() if k != "column_set"]
    head = f"{reason['file']}: {reason['expectation']}" + (f"({', '.join(args)})" if args else "")
    if "detail" in reason:
        return f"{head}: {reason['detail']}"
    if "unexpected_count" in reason:
        sample = ", ".join(repr(v) for v in reason.get("sample", []))
        return f"{head} failed on {reason['unexpected_count']} of {reason['element_count']} rows, e.g. {sample}"
    if reason["expectation"] == "expect_table_columns_to_match_set":
        expected = set((reason.get("kwargs") or {}).get("column_set") or [])
        observed = set(reason.get("observed_value") or [])
        return f"{head} failed: missing {sorted(expected - observed)}, unexpected {sorted(observed - expected)}"
    return f"{head} failed: observed {reason.get('observed_value')!r}"


def rejection_message(month: Month, reasons: list[dict[str, Any]], quarantined_to: Path | None) -> str:
    """The failure message of a rejected batch: every failed expectation, one per line (pure)."""
    lines = [f"{month} rejected: {len(reasons)} failed expectation(s)"]
    lines += [f"  - {describe_reason(r)}" for r in reasons]
    if quarantined_to is not None:
        lines.append(f"quarantined to {quarantined_to}")
    return "\n".join(lines)


def report_html(month: Month, reasons: list[dict[str, Any]], results: dict[str, dict[str, Any]]) -> str:
    """A self-contained page for people: what failed first, then every expectation per file (pure)."""
    from html import escape

    rows = "".join(f"<li>{escape(describe_reason(r))}</li>" for r in reasons)
    sections = []
    for file, file_result in results.items():
        lines = []
        for r in file_result["results"]:
            config = r["expectation_config"]
            column = config["kwargs"].get("column", "")
            result = r.get("result") or {}
            seen = result.get("unexpected_count", result.get("observed_value", ""))
            mark = "pass" if r["success"] else "FAIL"
            lines.append(
                f"<tr class='{mark}'><td>{mark}</td><td>{escape(config['type'])}</td>"
                f"<td>{escape(str(column))}</td><td>{escape(str(seen))[:200]}</td></tr>"
            )
        sections.append(
            f"<h2>{escape(file)}</h2><table><tr><th></th><th>expectation</th><th>column</th>"
            f"<th>unexpected / observed</th></tr>{''.join(lines)}</table>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>StreamFlow {month}: validation</title><style>"
        "body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:left}"
        ".FAIL{background:#fdd}.pass{color:#555}</style></head><body>"
        f"<h1>{month}: {'rejected' if reasons else 'accepted'}</h1>"
        f"<h2>Failed expectations</h2><ul>{rows or '<li>none</li>'}</ul>{''.join(sections)}</body></html>"
    )


def schema_disagreements(suite: dict[str, Any], table: Table) -> list[str]:
    """Where a suite's column checks differ from the schema declaration (pure; empty when they agree)."""
    found: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for e in suite["expectations"]:
        found.setdefault((e["type"], e["kwargs"].get("column")), []).append(e["kwargs"])
    problems = []
    column_sets = [k["column_set"] for k in found.get(("expect_table_columns_to_match_set", None), [])]
    if column_sets != [table.column_names]:
        problems.append(f"{table.name}: column set {column_sets} != {table.column_names}")
    for column in table.columns:
        name = column.name
        if ("expect_column_values_to_not_be_null", name) not in found:
            problems.append(f"{table.name}.{name}: no not-null check")
        regexes = [k["regex"] for k in found.get(("expect_column_values_to_match_regex", name), [])]
        if column.dtype in TYPE_REGEX and regexes != [TYPE_REGEX[column.dtype]]:
            problems.append(f"{table.name}.{name}: type {column.dtype} but format checks {regexes}")
        ranges = [(k["min_value"], k["max_value"]) for k in found.get(("expect_column_values_to_be_between", name), [])]
        wanted = (
            [(column.min_value, column.max_value)]
            if column.min_value is not None or column.max_value is not None
            else []
        )
        if ranges != wanted:
            problems.append(f"{table.name}.{name}: range {ranges} != schema {wanted}")
        sets = [
            sorted(map(str, k["value_set"]))
            for k in found.get(("expect_column_values_to_be_in_set", name), [])
            if name != LABEL
        ]
        wanted_sets = [sorted(column.allowed)] if column.allowed is not None else []
        if sets != wanted_sets:
            problems.append(f"{table.name}.{name}: categories {sets} != schema {wanted_sets}")
    declared = set(table.column_names) | {ORPHAN_COLUMN, IN_OTHER_CHUNK_COLUMN, None}
    for kind, name in found:
        if name not in declared:
            problems.append(f"{table.name}: {kind} on undeclared column {name}")
    return problems
