"""
### StreamFlow: ingest a monthly drop

Validates every CSV of `month_NNN/` (from `STREAMFLOW_DROPS_DIR`) with the Great Expectations
suites in `expectations/` **before anything is written**, then loads the raw tables and the four
point-in-time snapshot tables in one transaction (COPY, idempotent per `as_of`).

* **Rejected batch**: the run fails at once (no retry: the same files fail the same way) naming
  each failed expectation with sample values, the drop is copied to
  `.streamflow/quarantine/<month>-<time>/` with `validation.json` and `report.html`, an
  `ingestion_runs` row records the reasons, and the warehouse is left as it was.
  With notifications configured (README "Notifications"), the reasons are mailed or posted too.
* **Accepted batch**: an `ingestion_runs` success row with row counts, and the asset
  `streamflow_snapshots` is emitted with `{month, as_of}`, which schedules `streamflow_features`.
* **Unchanged batch** (the same files as the month's last load, e.g. a re-delivery): recorded
  `unchanged`, nothing is loaded and `load` is skipped, so no asset event: features, drift and
  training don't run again. `force` loads it anyway and forces the materialization it publishes.

Every task retries once after 30 s (a restarting database); a load retry rewrites the same rows.
Param `month`: `month_000`, `month_001`, ... A month with no drop folder fails at once.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from streamflow_mlops.pipelines.dag_defaults import (
    DATA_TEAM,
    SNAPSHOTS,
    dag_defaults,
    fail_at_once,
    force_param,
    month_param,
    run_forced,
    run_month,
)
from streamflow_mlops.pipelines.notifiers import BatchRejectedNotifier

WAREHOUSE_CONN_ID = "streamflow_warehouse"


@dag(
    schedule=None,
    doc_md=__doc__,
    params={
        "month": month_param("Drop folder to ingest, e.g. month_001"),
        "force": force_param("Load and publish even when the drop is unchanged since its last load (a backfill)"),
    },
    **dag_defaults("ingestion", owner=DATA_TEAM),
)
def streamflow_ingest():
    @task(on_failure_callback=BatchRejectedNotifier())
    def validate(params=None, triggering_asset_events=None) -> dict:
        """GE-validate every file; on failure quarantine, record and fail with the reasons."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        from streamflow_mlops.data.ingest import BatchRejected, validate_month

        month = run_month(params, triggering_asset_events)
        with fail_at_once(BatchRejected, FileNotFoundError):
            return validate_month(month, PostgresHook(postgres_conn_id=WAREHOUSE_CONN_ID).get_conn)

    @task(outlets=[SNAPSHOTS])
    def load(validated: dict, params=None, triggering_asset_events=None, outlet_events=None) -> dict:
        """One transaction: raw tables, snapshots and the ingestion_runs row for this as_of."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook
        from airflow.sdk.exceptions import AirflowSkipException

        from streamflow_mlops.data.ingest import load_month

        force = run_forced(params, triggering_asset_events)
        summary = load_month(validated, PostgresHook(postgres_conn_id=WAREHOUSE_CONN_ID).get_conn, force=force)
        if not summary["changed"]:
            raise AirflowSkipException(f"{summary['month']} is unchanged since its last load: nothing published")
        # A forced load forces the materialization it publishes (a backfill of an older month).
        outlet_events[SNAPSHOTS].extra = {"month": summary["month"], "as_of": summary["as_of"]} | (
            {"force": True} if force else {}
        )
        return summary

    load(validate())


streamflow_ingest()
