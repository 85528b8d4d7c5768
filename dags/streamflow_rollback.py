"""
### StreamFlow: roll the champion back

Points the `champion` alias of `streamflow_churn` at another version and imports it into the
BentoML model store; the running service swaps to it within its poll interval (about 10 s).

* `version` empty: the previous champion (the version this one replaced).
* `version` given: that version; a version that does not exist fails the run with the list of
  versions that do.

Who and why are recorded as tags on the version (`rollback_by`, `rollback_at`, `rollback_reason`).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, Param, dag, task

CHAMPION = Asset("streamflow_champion")


@dag(
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    default_args={"owner": "streamflow-ml", "retries": 1},
    tags=["streamflow", "registry", "mlflow"],
    params={
        "version": Param(
            "", type="string", pattern=r"^[0-9]*$", description="Model version to serve; empty = the previous champion"
        ),
        "reason": Param("manual rollback", type="string", description="Why (recorded on the version)"),
    },
)
def streamflow_rollback():
    @task(outlets=[CHAMPION])
    def rollback(params=None, dag_run=None, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from streamflow_mlops.model.registry import UnknownVersionError
        from streamflow_mlops.pipelines.champion import rollback_champion

        who = (dag_run.conf or {}).get("by") or getattr(dag_run, "triggering_user_name", None) or "airflow"
        try:
            champion = rollback_champion(params["version"] or None, by=str(who), reason=params["reason"])
        except UnknownVersionError as error:
            # Retrying can't make a missing version appear: fail at once with the versions that exist.
            raise AirflowFailException(str(error)) from error
        outlet_events[CHAMPION].extra = {"version": champion["version"], "month": champion["month"]}
        return champion

    rollback()


streamflow_rollback()
