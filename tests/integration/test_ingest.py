"""Ingestion against real Postgres and real GE: broken feeds are rejected and change nothing,
harmless variations load, re-runs are idempotent, months sit side by side."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from streamflow_mlops.config.schema import RAW_TABLES
from streamflow_mlops.config.settings import get_settings, replace_database
from streamflow_mlops.data.ingest import BatchRejected, load_month, validate_month
from streamflow_mlops.data.warehouse import create_schema, load_drop
from streamflow_mlops.synthetic.generate import DropSpec, default_drift, write_drop

USERS = 150
DATA_TABLES = [t.name for t in RAW_TABLES] + [
    "subscriptions_profile_snapshots",
    "usage_agg_30d_snapshots",
    "payments_agg_90d_snapshots",
    "support_agg_90d_snapshots",
    "prediction_log",
    "drift_reports",
]


def connector(url: str) -> Callable[[], psycopg.Connection]:
    return lambda: psycopg.connect(url)


def warehouse_digest(url: str) -> dict[str, tuple]:
    """Every data table's content and its structure: what a rejected batch must not touch."""
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT table_name, string_agg(column_name || ':' || data_type, ',' ORDER BY ordinal_position) "
            "FROM information_schema.columns WHERE table_schema = 'streamflow' GROUP BY table_name"
        ).fetchall()
        digest = {"__structure__": tuple(sorted(tables))}
        for name in DATA_TABLES:
            digest[name] = conn.execute(
                "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                f"FROM streamflow.{name} t"
            ).fetchone()
        return digest


def runs(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT month, as_of::text, status, row_counts, failed_expectations, report_path "
            "FROM streamflow.ingestion_runs ORDER BY run_id"
        ).fetchall()


def ingest(month: str, url: str, force: bool = False) -> dict:
    return load_month(validate_month(month, connector(url)), connector(url), force=force)


@pytest.fixture(scope="module")
def good_drops(tmp_path_factory) -> Path:
    """month_000 and a drifted month_001, written once for the module (copied by each test)."""
    out = tmp_path_factory.mktemp("drops")
    write_drop(DropSpec(0, users=USERS), out)
    write_drop(DropSpec(1, users=USERS, drift=default_drift(1)), out)
    return out


@pytest.fixture
def drops(stack_env, good_drops) -> Path:
    shutil.copytree(good_drops, stack_env.drops_dir)
    return stack_env.drops_dir


def rewrite(path: Path, edit: Callable[[list[str]], list[str]]) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def set_cell(path: Path, column: str, row: int, value: str) -> None:
    def edit(lines: list[str]) -> list[str]:
        header = lines[0].split(",")
        cells = lines[row + 1].split(",")
        cells[header.index(column)] = value
        lines[row + 1] = ",".join(cells)
        return lines

    rewrite(path, edit)


def drop_column(path: Path, column: str) -> None:
    def edit(lines: list[str]) -> list[str]:
        i = lines[0].split(",").index(column)
        return [",".join(c for j, c in enumerate(line.split(",")) if j != i) for line in lines]

    rewrite(path, edit)


# Each way a real monthly feed breaks: (id, how to break month_001, the expectation that must be named).
BREAKAGES: list[tuple[str, Callable[[Path], None], str]] = [
    ("text_in_int", lambda m: set_cell(m / "usage_agg_30d.csv", "skips_7d", 3, "n/a"), "match_regex(skips_7d"),
    (
        "float_in_int",
        lambda m: set_cell(m / "payments_agg_90d.csv", "failed_payments_90d", 0, "1.5"),
        "match_regex(failed_payments_90d",
    ),
    ("inf", lambda m: set_cell(m / "usage_agg_30d.csv", "watch_hours_30d", 1, "inf"), "'inf'"),
    ("nan_text", lambda m: set_cell(m / "subscriptions.csv", "monthly_fee", 1, "NaN"), "'NaN'"),
    (
        "empty_cell",
        lambda m: set_cell(m / "support_agg_90d.csv", "ticket_avg_resolution_hrs_90d", 2, ""),
        "not_be_null(ticket_avg_resolution_hrs_90d",
    ),
    ("bad_bool", lambda m: set_cell(m / "users.csv", "paperless_billing", 2, "maybe"), "'maybe'"),
    ("negative_fee", lambda m: set_cell(m / "subscriptions.csv", "monthly_fee", 4, "-12.5"), "-12.5"),
    (
        "negative_hours",
        lambda m: set_cell(m / "usage_agg_30d.csv", "watch_hours_30d", 4, "-1"),
        "between(watch_hours_30d",
    ),
    ("implausible_hours", lambda m: set_cell(m / "usage_agg_30d.csv", "watch_hours_30d", 4, "43200"), "43200"),
    (
        "huge_int",
        lambda m: set_cell(m / "users.csv", "months_active", 4, "99999999999999999999999"),
        "between(months_active",
    ),
    ("unknown_category", lambda m: set_cell(m / "subscriptions.csv", "net_service", 5, "Satellite"), "'Satellite'"),
    ("bad_label", lambda m: set_cell(m / "labels.csv", "churn_label", 0, "2"), "in_set(churn_label"),
    ("duplicate_user", lambda m: rewrite(m / "users.csv", lambda lines: lines + [lines[1]]), "be_unique(user_id"),
    (
        "missing_column",
        lambda m: drop_column(m / "usage_agg_30d.csv", "watch_hours_30d"),
        "missing ['watch_hours_30d']",
    ),
    (
        "extra_column",
        lambda m: rewrite(m / "labels.csv", lambda ls: [ls[0] + ",note"] + [x + ",x" for x in ls[1:]]),
        "unexpected ['note']",
    ),
    ("empty_file", lambda m: (m / "payments_agg_90d.csv").write_text(""), "payments_agg_90d.csv is empty"),
    ("header_only", lambda m: rewrite(m / "labels.csv", lambda lines: lines[:1]), "row_count_to_be_between"),
    ("missing_file", lambda m: (m / "support_agg_90d.csv").unlink(), "support_agg_90d.csv is missing"),
    (
        "ragged_row",
        lambda m: rewrite(m / "users.csv", lambda ls: ls[:2] + [ls[2] + ",extra"] + ls[3:]),
        "not a valid UTF-8 CSV",
    ),
    (
        "short_row",
        lambda m: rewrite(m / "users.csv", lambda ls: ls[:2] + [ls[2].rsplit(",", 1)[0]] + ls[3:]),
        "not_be_null(paperless_billing",
    ),
    (
        "not_utf8",
        lambda m: (m / "subscriptions.csv").write_bytes((m / "subscriptions.csv").read_bytes() + b"\xff\xfe,1\n"),
        "not a valid UTF-8 CSV",
    ),
    ("orphan_key", lambda m: set_cell(m / "usage_agg_30d.csv", "user_id", 0, "0000-ZZZZZ"), "'0000-ZZZZZ'"),
    ("truncated_table", lambda m: rewrite(m / "support_agg_90d.csv", lambda lines: lines[:-5]), "row_count_to_equal"),
    ("malformed_user_id", lambda m: set_cell(m / "labels.csv", "user_id", 0, "7590vhveg"), "'7590vhveg'"),
    (
        "manifest_wrong_month",
        lambda m: (m / "manifest.json").write_text(json.dumps({"month": "month_000", "as_of": "2024-01-31"})),
        "is for month_000",
    ),
    (
        "manifest_another_months_as_of",
        lambda m: (m / "manifest.json").write_text(json.dumps({"month": "month_001", "as_of": "2024-01-31"})),
        "manifest.json says as_of 2024-01-31, but month_001 is as_of 2024-02-29",
    ),
    (
        "manifest_without_month",
        lambda m: (m / "manifest.json").write_text(json.dumps({"as_of": "2024-02-29"})),
        "manifest.json has no month",
    ),
]


@pytest.fixture(scope="module")
def loaded_warehouse(pg_server, good_drops):
    """One database for the whole breakage matrix, month_000 loaded once (without GE, to stay fast):
    after every rejection its data must still be exactly this."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = replace_database(pg_server, name)
    with psycopg.connect(url) as conn:
        create_schema(conn)
        with conn.transaction():
            load_drop(conn, good_drops / "month_000", DropSpec(0).as_of)
    yield url, warehouse_digest(url)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
@pytest.mark.parametrize("breakage", BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_broken_feed_is_rejected_and_changes_nothing(breakage, loaded_warehouse, good_drops, tmp_path, monkeypatch):
    name, damage, named = breakage
    url, before = loaded_warehouse
    monkeypatch.setenv("STREAMFLOW_DB_URL", url)
    monkeypatch.setenv("STREAMFLOW_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("STREAMFLOW_DROPS_DIR", str(tmp_path / "drops"))
    get_settings.cache_clear()
    settings = get_settings()
    shutil.copytree(good_drops / "month_001", settings.drops_dir / "month_001")
    damage(settings.drops_dir / "month_001")

    with pytest.raises(BatchRejected) as rejected:
        validate_month("month_001", connector(url))
    get_settings.cache_clear()

    message = str(rejected.value)
    assert named in message, message
    assert warehouse_digest(url) == before
    (*_, last) = runs(url)
    month, _, status, row_counts, failed, report = last
    assert (month, status) == ("month_001", "rejected") and failed
    assert message.count("\n  - ") == len(failed)
    quarantined = Path(report).parent
    assert quarantined.parent == settings.quarantine_dir
    assert (quarantined / "report.html").read_text().count("<li>") == len(failed)
    validation = json.loads((quarantined / "validation.json").read_text())
    assert validation["success"] is False
    assert [(r["file"], r["expectation"]) for r in validation["reasons"]] == [
        (r["file"], r["expectation"]) for r in failed
    ]
    assert {p.name for p in (settings.drops_dir / "month_001").iterdir()} <= {p.name for p in quarantined.iterdir()}


def crlf(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))


def reorder_columns(path: Path) -> None:
    rewrite(path, lambda lines: [",".join(reversed(line.split(","))) for line in lines])


def no_trailing_newline(path: Path) -> None:
    path.write_bytes(path.read_bytes().rstrip(b"\n"))


def byte_order_mark(path: Path) -> None:
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())


def quoted_cells(path: Path) -> None:
    rewrite(path, lambda lines: [",".join(f'"{c}"' for c in line.split(",")) for line in lines])


def shuffled_rows(path: Path) -> None:
    rewrite(path, lambda lines: lines[:1] + lines[:0:-1])


def test_harmless_variations_load_the_same_rows(drops, stack_env):
    url = stack_env.db_url
    ingest("month_001", url)
    reference = warehouse_digest(url)
    month = drops / "month_001"
    for change, file in [
        (crlf, "users.csv"),
        (reorder_columns, "subscriptions.csv"),
        (no_trailing_newline, "usage_agg_30d.csv"),
        (byte_order_mark, "payments_agg_90d.csv"),
        (quoted_cells, "support_agg_90d.csv"),
        (shuffled_rows, "labels.csv"),
    ]:
        change(month / file)
    summary = ingest("month_001", url)
    assert summary["row_counts"]["users"] == USERS
    assert warehouse_digest(url) == reference


def test_good_month_loads_with_a_success_row_and_reruns_are_idempotent(drops, stack_env):
    url = stack_env.db_url
    first = ingest("month_000", url)
    assert first["as_of"] == "2024-01-31" and first["month"] == "month_000"
    assert all(first["row_counts"][t.name] == USERS for t in RAW_TABLES)
    assert first["row_counts"]["subscriptions_profile_snapshots"] == USERS
    once = warehouse_digest(url)
    ingest("month_001", url)
    both = warehouse_digest(url)
    # The same months delivered again, an older one after a newer one: nothing is loaded or published.
    assert ingest("month_000", url)["changed"] is False
    assert ingest("month_001", url)["changed"] is False
    assert warehouse_digest(url) == both
    assert both["users"][0] == 2 * USERS and once["users"][0] == USERS
    statuses = [(r[0], r[2], r[3]["users"]) for r in runs(url)]
    assert statuses == [
        ("month_000", "success", USERS),
        ("month_001", "success", USERS),
        ("month_000", "unchanged", USERS),
        ("month_001", "unchanged", USERS),
    ]
    # A deliberate re-load (force) loads it again and leaves the same rows.
    assert ingest("month_000", url, force=True)["changed"] is True
    assert warehouse_digest(url) == both
    with psycopg.connect(url) as conn:
        per_month = conn.execute(
            "SELECT as_of::date::text, count(*) FROM streamflow.usage_agg_30d_snapshots GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert per_month == [("2024-01-31", USERS), ("2024-02-29", USERS)]


def test_load_refuses_files_changed_after_validation(drops, stack_env):
    url = stack_env.db_url
    ingest("month_001", url)
    before = warehouse_digest(url)
    validated = validate_month("month_000", connector(url))
    set_cell(drops / "month_000" / "subscriptions.csv", "monthly_fee", 0, "-1")
    with pytest.raises(RuntimeError, match="changed since it was validated"):
        load_month(validated, connector(url))
    assert warehouse_digest(url) == before
