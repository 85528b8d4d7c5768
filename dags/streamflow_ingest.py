"""
### StreamFlow: ingest a monthly drop

Validates every CSV of `month_NNN/` (from `STREAMFLOW_DROPS_DIR`) with the Great Expectations
suites in `expectations/` **before anything is written**, then loads the raw tables and the four
point-in-time snapshot tables in one transaction (COPY, idempotent per `as_of`).

* **Rejected batch**: the run fails naming each failed expectation with sample values, the drop
  is copied to `.streamflow/quarantine/<month>-<time>/` with `validation.json` and `report.html`,
  an `ingestion_runs` row records the reasons, and the warehouse is left as it was.
* **Accepted batch**: an `ingestion_runs` success row with row counts, and the asset
  `streamflow_snapshots` is emitted with `{month, as_of}`, which schedules `streamflow_features`.

Param `month`: `month_000`, `month_001`, ...
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, Param, dag, task

SNAPSHOTS = Asset("streamflow_snapshots")
WAREHOUSE_CONN_ID = "streamflow_warehouse"


@dag(
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    default_args={"owner": "streamflow-data", "retries": 1},
    tags=["streamflow", "ingestion"],
    params={
        "month": Param(
            "month_000", type="string", pattern=r"^month_\d{3}$", description="Drop folder to ingest, e.g. month_001"
        ),
    },
)
def streamflow_ingest():
    # A rejected batch stays rejected: retrying validation would only quarantine it twice.
    @task(retries=0)
    def validate(params=None) -> dict:
        """GE-validate every file; on failure quarantine, record and fail with the reasons."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        from streamflow_mlops.data.ingest import validate_month

        return validate_month(params["month"], PostgresHook(postgres_conn_id=WAREHOUSE_CONN_ID).get_conn)

    @task(outlets=[SNAPSHOTS])
    def load(validated: dict, outlet_events=None) -> dict:
        """One transaction: raw tables, snapshots and the ingestion_runs row for this as_of."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        from streamflow_mlops.data.ingest import load_month

        summary = load_month(validated, PostgresHook(postgres_conn_id=WAREHOUSE_CONN_ID).get_conn)
        outlet_events[SNAPSHOTS].extra = {"month": summary["month"], "as_of": summary["as_of"]}
        return summary

    load(validate())


streamflow_ingest()
