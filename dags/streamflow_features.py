"""
### StreamFlow: publish features through Feast

Scheduled on the asset `streamflow_snapshots` (emitted by `streamflow_ingest`): the month comes
from the asset event's `extra`. Run by hand, it takes the `month` param.

1. `feast apply` of `feature_repo/` (entities, sources, feature views, the FeatureService).
2. Materialize the explicit window that ends at the month's `as_of` into the online store
   (stateless: the window comes from the month, so re-runs and retries write the same values).
   A month older than the newest loaded one is skipped (the online store never moves back in
   time) unless the run, or the ingest that triggered it, says `force` (a deliberate backfill).
3. Parity: for a sample of users, the online values equal the offline point-in-time values at
   that `as_of`; the run fails loudly otherwise, at once (re-reading the same stores cannot
   change the answer).

Emits the asset `streamflow_features` with `{month, as_of}`, which schedules `streamflow_drift`.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from streamflow_mlops.pipelines.dag_defaults import (
    FEATURES,
    SNAPSHOTS,
    dag_defaults,
    fail_at_once,
    force_param,
    month_param,
    run_forced,
    run_month,
)


@dag(
    schedule=[SNAPSHOTS],
    doc_md=__doc__,
    params={
        "month": month_param("Month to materialize; an asset-triggered run takes it from the event"),
        "force": force_param("Materialize even a month older than the newest loaded one (a backfill)"),
    },
    **dag_defaults("features", "feast"),
)
def streamflow_features():
    @task
    def apply(params=None, triggering_asset_events=None) -> str:
        from streamflow_mlops.features.store import apply_repo

        month = run_month(params, triggering_asset_events)
        apply_repo()
        return month

    @task
    def materialize(month: str, params=None, triggering_asset_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from streamflow_mlops.features.materialize import materialize_month

        report = materialize_month(month, force=run_forced(params, triggering_asset_events))
        if report.get("skipped"):
            raise AirflowSkipException(report["skipped"])
        return report

    @task(outlets=[FEATURES])
    def check_parity(materialized: dict, outlet_events=None) -> dict:
        from streamflow_mlops.features.parity import FeatureParityError
        from streamflow_mlops.features.parity import check_parity as parity

        with fail_at_once(FeatureParityError):
            report = parity(materialized["month"])
        outlet_events[FEATURES].extra = {"month": materialized["month"], "as_of": materialized["as_of"]}
        return report

    check_parity(materialize(apply()))


streamflow_features()
