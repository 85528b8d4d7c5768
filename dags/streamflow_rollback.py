"""
### StreamFlow: roll the champion back

Points the `champion` alias of `streamflow_churn` at another version and imports it into the
BentoML model store; the running service swaps to it within its poll interval (about 10 s).
Emits the asset `streamflow_champion`, as a promotion does.

* `version` empty: the previous champion (the version this one replaced).
* `version` given: that version; a version that does not exist fails the run at once (no
  retry: it will not appear) with the list of versions that do.

Who and why are recorded as tags on the version (`rollback_by`, `rollback_at`, `rollback_reason`),
and, with notifications configured (README "Notifications"), mailed or posted.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from streamflow_mlops.pipelines.dag_defaults import CHAMPION, dag_defaults, fail_at_once
from streamflow_mlops.pipelines.notifiers import RollbackNotifier


@dag(
    schedule=None,
    # One alias move at a time; a retry of the same run (its run id is the request) is a no-op.
    max_active_runs=1,
    doc_md=__doc__,
    params={
        "version": Param(
            "", type="string", pattern=r"^[0-9]*$", description="Model version to serve; empty = the previous champion"
        ),
        "reason": Param("manual rollback", type="string", description="Why (recorded on the version)"),
    },
    **dag_defaults("registry", "mlflow"),
)
def streamflow_rollback():
    @task(outlets=[CHAMPION], on_success_callback=RollbackNotifier())
    def rollback(params=None, dag_run=None, outlet_events=None) -> dict:
        from streamflow_mlops.model.registry import UnknownVersionError
        from streamflow_mlops.pipelines.champion import ChampionMovedError, rollback_champion

        who = (dag_run.conf or {}).get("by") or getattr(dag_run, "triggering_user_name", None) or "airflow"
        with fail_at_once(UnknownVersionError, ChampionMovedError):
            champion = rollback_champion(
                params["version"] or None, by=str(who), reason=params["reason"], request=dag_run.run_id
            )
        outlet_events[CHAMPION].extra = {"version": champion["version"], "month": champion["month"]}
        return champion

    rollback()


streamflow_rollback()
