"""
### StreamFlow: publish features through Feast

Scheduled on the asset `streamflow_snapshots` (emitted by `streamflow_ingest`), or run by hand
for a `month`.

1. `feast apply` of `feature_repo/` (entities, sources, feature views, the FeatureService).
2. Materialize the explicit window that ends at the month's `as_of` into the online store
   (stateless: the window comes from the month, so re-runs write the same values).
3. Parity: for a sample of users, the online values equal the offline point-in-time values at
   that `as_of`; the run fails loudly otherwise.

Emits the asset `streamflow_features` with `{month, as_of}`, which schedules `streamflow_drift`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, Param, dag, task

SNAPSHOTS = Asset("streamflow_snapshots")
FEATURES = Asset("streamflow_features")


@dag(
    schedule=[SNAPSHOTS],
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    default_args={"owner": "streamflow-ml", "retries": 1},
    tags=["streamflow", "features", "feast"],
    params={
        "month": Param(
            "month_000",
            type="string",
            pattern=r"^month_\d{3}$",
            description="Month to materialize; an asset-triggered run takes it from the event",
        ),
    },
)
def streamflow_features():
    @task
    def apply(params=None, triggering_asset_events=None) -> str:
        from streamflow_mlops.features.store import apply_repo
        from streamflow_mlops.pipelines.runs import month_for_run

        month = month_for_run(params, triggering_asset_events)
        apply_repo()
        return month

    @task
    def materialize(month: str) -> dict:
        from streamflow_mlops.features.materialize import materialize_month

        return materialize_month(month)

    @task(outlets=[FEATURES])
    def check_parity(materialized: dict, outlet_events=None) -> dict:
        from streamflow_mlops.features.parity import check_parity as parity

        report = parity(materialized["month"])
        outlet_events[FEATURES].extra = {"month": materialized["month"], "as_of": materialized["as_of"]}
        return report

    check_parity(materialize(apply()))


streamflow_features()
