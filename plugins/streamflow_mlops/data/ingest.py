"""Ingestion of a monthly drop: validate everything first, quarantine a bad batch, load a good one.

`validate_month` and `load_month` are the two tasks of the `streamflow_ingest` DAG. `get_conn`
is any callable returning a psycopg 3 connection (the DAG passes `PostgresHook(...).get_conn`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.settings import WAREHOUSE_SCHEMA, get_settings
from streamflow_mlops.data import lake_load
from streamflow_mlops.data.spark import spark_session
from streamflow_mlops.data.validation import (
    DropValidation,
    describe_reason,
    drop_tables,
    rejection_message,
    report_html,
    validate_drop,
)
from streamflow_mlops.data.validation_chunks import file_sha256
from streamflow_mlops.data.warehouse import create_schema, load_drop

log = logging.getLogger(__name__)

ConnectionFactory = Callable[[], psycopg.Connection]
# One load at a time: two concurrent loads of one as_of would both delete, then collide on insert.
LOAD_LOCK_KEY = 0x5F1_0AD
# How long a failed load keeps trying to record its failure while the database comes back.
RECORD_FAILURE_WAIT_S = 30.0


class BatchRejected(Exception):
    """A drop failed validation; the message names every failed expectation, and the facts stay
    attached for whoever is told about it (pipelines/notifiers.py)."""

    def __init__(self, message: str, month: str, reasons: list[str], quarantined_to: str) -> None:
        super().__init__(message)
        self.month = month
        self.reasons = reasons
        self.quarantined_to = quarantined_to


def manifest_problem(manifest: Any, month: Month) -> str | None:
    """Why a drop's manifest can't be trusted for `month`, or None.

    The folder decides the month and the calendar decides its as_of: a manifest that names another
    month, names none, or dates the drop to another month's as_of would load this drop into that
    month's partitions (replacing them), so it is refused instead of believed.
    """
    if not isinstance(manifest, dict):
        return "manifest.json must be a JSON object with month and as_of"
    if "month" not in manifest:
        return f'manifest.json has no month (expected "month": "{month}")'
    if manifest["month"] != month.name:
        return f"manifest.json is for {manifest['month']}, not {month} (the folder's month)"
    try:
        as_of = date.fromisoformat(str(manifest["as_of"]))
    except (KeyError, ValueError) as exc:
        return f"manifest.json has no valid as_of: {exc!r}"
    expected = month.as_of
    if as_of != expected:
        return f"manifest.json says as_of {as_of}, but {month} is as_of {expected}"
    return None


def read_manifest(folder: Path, month: Month) -> tuple[date | None, str | None]:
    """The drop's as_of from `manifest.json`, or why it can't be trusted."""
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "manifest.json is missing"
    except ValueError as exc:
        return None, f"manifest.json is not valid JSON: {exc}"
    problem = manifest_problem(manifest, month)
    if problem is not None:
        return None, problem
    return date.fromisoformat(str(manifest["as_of"])), None


def read_labels_as_of(folder: Path, as_of: date) -> tuple[date, str | None]:
    """The as_of the drop's labels belong to: the manifest's `labels_as_of`, else the drop's own
    as_of (the default layout); outcomes of a period after the drop's as_of cannot be known yet."""
    try:
        text = json.loads((folder / "manifest.json").read_text()).get("labels_as_of")
        labels_as_of = date.fromisoformat(text) if text else as_of
    except (ValueError, TypeError, AttributeError) as exc:
        return as_of, f"manifest.json has no valid labels_as_of: {exc!r}"
    if labels_as_of > as_of:
        return as_of, f"manifest.json labels_as_of {labels_as_of} is after the drop's as_of {as_of}"
    return labels_as_of, None


def file_digests(folder: Path) -> dict[str, str | None]:
    """Each table file's sha256, read block by block (a 10M-user CSV is ~0.5 GB); an optional
    table's only when its file is there, so a drop without one keeps the digest it always had."""
    return {t.file: file_sha256(folder / t.file) for t in drop_tables(folder)}


def drop_digest(file_sha256: dict[str, str | None], manifest: bytes) -> str:
    """One digest of a whole drop (its tables and its manifest): equal digests, identical data."""
    text = json.dumps({"files": file_sha256, "manifest": hashlib.sha256(manifest).hexdigest()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def quarantine_drop(
    folder: Path, quarantine_dir: Path, month: str, started_at: datetime, validation: dict[str, Any], html: str
) -> Path:
    """Copy the drop to `<quarantine>/<month>-<time>/` with `validation.json` and `report.html`."""
    target = quarantine_dir / f"{month}-{started_at:%Y%m%dT%H%M%S%fZ}"
    shutil.copytree(folder, target)
    (target / "validation.json").write_text(json.dumps(validation, indent=1, default=str) + "\n")
    (target / "report.html").write_text(html)
    return target


def record_run(
    conn: psycopg.Connection,
    *,
    month: Month,
    status: str,
    row_counts: dict[str, int],
    failed: list[dict[str, Any]],
    report_path: str | None,
    started_at: datetime,
    digest: str | None = None,
    labels_as_of: date | None = None,
) -> int:
    """Insert one `ingestion_runs` row (as_of: the month's) in the caller's transaction; returns its run_id."""
    return conn.execute(
        f"INSERT INTO {WAREHOUSE_SCHEMA}.ingestion_runs "
        "(month, as_of, status, row_counts, failed_expectations, report_path, started_at, drop_digest, labels_as_of) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING run_id",
        (
            month.name,
            month.as_of,
            status,
            Jsonb(row_counts),
            Jsonb(failed),
            report_path,
            started_at,
            digest,
            labels_as_of,
        ),
    ).fetchone()[0]


def last_loaded_digest(conn: psycopg.Connection, month: Month) -> str | None:
    """The digest of the data the warehouse holds for `month` (its latest successful load)."""
    row = conn.execute(
        f"SELECT drop_digest FROM {WAREHOUSE_SCHEMA}.ingestion_runs WHERE month = %s AND status IN "
        "('success', 'unchanged') ORDER BY run_id DESC LIMIT 1",
        (month.name,),
    ).fetchone()
    return row[0] if row else None


def validate_drop_on_engine(folder: Path, expectations_dir: Path) -> DropValidation:
    """The drop validated by the configured engine (STREAMFLOW_ENGINE): pandas chunk by chunk, or
    Spark DataFrames; both give the same `DropValidation` (tests/spark/test_validation_engines.py)."""
    if get_settings().engine == "spark":
        from streamflow_mlops.data.spark import spark_session
        from streamflow_mlops.data.validation_spark import validate_drop_spark

        return validate_drop_spark(folder, expectations_dir, spark_session())
    return validate_drop(folder, expectations_dir)


def validate_month(month: str | Month, get_conn: ConnectionFactory) -> dict[str, Any]:
    """Validate every CSV of the month before anything is written.

    Returns what `load_month` needs (JSON-serialisable, for XCom). A failing batch is
    quarantined with its full validation result and a report, recorded as 'rejected' in
    `ingestion_runs`, and raised as `BatchRejected`.
    """
    settings = get_settings()
    month = Month.parse(month)
    folder = settings.drops_dir / month.name
    started_at = datetime.now(UTC)
    if not folder.is_dir():
        raise FileNotFoundError(f"no drop folder {folder} (STREAMFLOW_DROPS_DIR={settings.drops_dir})")
    as_of, manifest_issue = read_manifest(folder, month)
    labels_as_of = as_of
    if as_of is not None and not manifest_issue:
        labels_as_of, manifest_issue = read_labels_as_of(folder, as_of)
    validation = validate_drop_on_engine(folder, settings.expectations_dir)
    if manifest_issue:
        validation.success = False
        validation.reasons.insert(
            0, {"file": "manifest.json", "expectation": "manifest_valid", "detail": manifest_issue}
        )
    if not validation.success:
        # A rejected run is recorded under the folder's month as the calendar dates it.
        _reject(month, folder, started_at, validation, get_conn)
    log.info("%s valid (%s rows/table, %.1fs)", month, validation.row_counts, validation.seconds)
    return {
        "month": month.name,
        "as_of": as_of.isoformat(),
        "labels_as_of": labels_as_of.isoformat(),
        "folder": str(folder),
        "sha256": validation.sha256,
        "row_counts": validation.row_counts,
        "started_at": started_at.isoformat(),
        "validation_seconds": round(validation.seconds, 3),
    }


def _reject(
    month: Month,
    folder: Path,
    started_at: datetime,
    validation: DropValidation,
    get_conn: ConnectionFactory,
) -> None:
    settings = get_settings()
    full = {
        "month": month.name,
        "as_of": month.as_of,
        "folder": str(folder),
        "success": False,
        "reasons": validation.reasons,
        "sha256": validation.sha256,
        "row_counts": validation.row_counts,
        "results": validation.results,
    }
    target = quarantine_drop(
        folder,
        settings.quarantine_dir,
        month.name,
        started_at,
        full,
        report_html(month, validation.reasons, validation.results),
    )
    with closing(get_conn()) as conn:
        create_schema(conn)
        with conn.transaction():
            record_run(
                conn,
                month=month,
                status="rejected",
                row_counts=validation.row_counts,
                failed=validation.reasons,
                report_path=str(target / "report.html"),
                started_at=started_at,
            )
    message = rejection_message(month, validation.reasons, target)
    log.error(message)
    raise BatchRejected(message, month.name, [describe_reason(r) for r in validation.reasons], str(target))


def load_month(validated: dict[str, Any], get_conn: ConnectionFactory, force: bool = False) -> dict[str, Any]:
    """Load a validated drop: raw tables, snapshots and the success row, in one transaction.

    Refuses files that changed since validation. A drop identical to the one the warehouse already
    holds for the month (same digest) is not loaded again: it is recorded 'unchanged' and the
    answer says `changed: False`, so nothing downstream re-publishes, re-materializes or retrains
    (`force` loads it anyway). A load that fails for another reason is rolled back and recorded
    as 'failed'.
    """
    folder = Path(validated["folder"])
    month = Month.parse(validated["month"])
    if file_digests(folder) != validated["sha256"]:
        raise RuntimeError(f"{folder} changed since it was validated; run the ingestion again")
    digest = drop_digest(validated["sha256"], (folder / "manifest.json").read_bytes())
    started_at = datetime.fromisoformat(validated["started_at"])
    begun = time.perf_counter()
    with closing(get_conn()) as conn:
        create_schema(conn)
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOAD_LOCK_KEY,))
                labels_as_of = date.fromisoformat(validated.get("labels_as_of") or validated["as_of"])
                changed = force or last_loaded_digest(conn, month) != digest or not month_in_engine(conn, month.as_of)
                counts = (
                    load_month_data(conn, folder, month.as_of, labels_as_of)
                    if changed
                    else dict(validated["row_counts"])
                )
                run_id = record_run(
                    conn,
                    month=month,
                    status="success" if changed else "unchanged",
                    row_counts=counts,
                    failed=[],
                    report_path=None,
                    started_at=started_at,
                    digest=digest,
                    labels_as_of=labels_as_of,
                )
        except Exception as exc:
            _record_failure(get_conn, month, started_at, exc)
            raise
    seconds = time.perf_counter() - begun
    if changed:
        log.info("%s loaded as_of %s in %.1fs: %s", month, month.as_of, seconds, counts)
    else:
        log.info("%s is unchanged since its last load (digest %s): nothing loaded or published", month, digest[:12])
    return {
        "month": month.name,
        "as_of": month.as_of.isoformat(),
        "run_id": run_id,
        "row_counts": counts,
        "changed": changed,
        "load_seconds": round(seconds, 3),
    }


def month_in_engine(conn: psycopg.Connection, as_of: date) -> bool:
    """Whether the configured engine's tables hold the month: a drop recorded as loaded may have
    gone to the other engine (STREAMFLOW_ENGINE switched since), or its lake may be gone."""
    settings = get_settings()
    if settings.engine == "spark":
        return lake_load.holds_month(spark_session(settings), settings.lake_url, as_of)
    row = conn.execute(f"SELECT EXISTS (SELECT 1 FROM {WAREHOUSE_SCHEMA}.users WHERE as_of = %s)", (as_of,)).fetchone()
    return bool(row[0])


def load_month_data(conn: psycopg.Connection, folder: Path, as_of: date, labels_as_of: date) -> dict[str, int]:
    """The month's raw and snapshot tables through the configured engine: into the warehouse in
    the caller's transaction, or (STREAMFLOW_ENGINE=spark) into the lake, swapped in at the end of
    the load while the caller holds the load lock; its `ingestion_runs` row commits after the swap."""
    settings = get_settings()
    if settings.engine == "spark":
        return lake_load.load_drop(spark_session(settings), settings.lake_url, folder, as_of, labels_as_of)
    return load_drop(conn, folder, as_of, labels_as_of)


def _record_failure(get_conn: ConnectionFactory, month: Month, started_at: datetime, exc: Exception) -> None:
    """Best effort, through a new connection: the load's own may have died with the database (a
    crash, a restart), so the record is tried again while it comes back, for up to
    RECORD_FAILURE_WAIT_S; a failure that still can't be recorded is logged, never raised over the
    error that failed the load."""
    deadline = time.monotonic() + RECORD_FAILURE_WAIT_S
    while True:
        try:
            with closing(get_conn()) as conn, conn.transaction():
                record_run(
                    conn,
                    month=month,
                    status="failed",
                    row_counts={},
                    failed=[{"expectation": "load", "detail": f"{type(exc).__name__}: {exc}"}],
                    report_path=None,
                    started_at=started_at,
                )
            return
        except psycopg.Error:
            if time.monotonic() >= deadline:
                log.exception("could not record the failed load of %s", month)
                return
            time.sleep(2)
