"""
### StreamFlow: drift gate for retraining

Scheduled on the asset `streamflow_features`. Compares the new month's features (read through
Feast at its `as_of`) with the features of the champion's training month (its `month` tag),
using Evidently's `DataDriftPreset`, plus prediction drift (the champion's scores on reference
vs current, and on what the service served, from `prediction_log`).

The HTML report is kept under `.streamflow/reports/` and as an MLflow artifact of a monitoring
run; a `drift_reports` row records the decision.

**Gate**: drift share >= `drift_threshold` triggers `streamflow_train` for the month; no champion
yet triggers the first training; otherwise the run ends with the skip and its reason logged.

**Why 0.3 by default**: on the generator's months (7,043 users, seeds 1-5), an undrifted month
shows a drift share of 0.0-0.07 (one column at most moves by chance), while the default drifted
month_001 (fee rise, usage drop, rebuffering, DSL-to-fiber shift) shows 0.5-0.6. 0.3 sits in
the middle of that gap, so neither noise nor a single moved column forces a retrain, while a
market-wide shift always does.
"""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Asset, Param, dag, task

FEATURES = Asset("streamflow_features")


@dag(
    schedule=[FEATURES],
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    default_args={"owner": "streamflow-ml", "retries": 1},
    tags=["streamflow", "monitoring", "evidently"],
    params={
        "month": Param("month_000", type="string", pattern=r"^month_\d{3}$",
                       description="Month to check; an asset-triggered run takes it from the event"),
        "drift_threshold": Param(0.3, type="number", minimum=0, maximum=1,
                                 description="Share of drifted feature columns that triggers a retrain"),
    },
)
def streamflow_drift():
    @task
    def measure_drift(params=None, triggering_asset_events=None) -> dict:
        from streamflow_mlops.drift import run_drift_check
        from streamflow_mlops.runs import month_for_run

        return run_drift_check(month_for_run(params, triggering_asset_events), float(params["drift_threshold"]))

    @task.short_circuit
    def needs_retrain(result: dict) -> bool:
        import logging

        logging.getLogger("airflow.task").info("%s: %s (%s)", result["month"], result["decision"], result["reason"])
        return result["decision"] == "retrain"

    result = measure_drift()
    gate = needs_retrain(result)
    trigger = TriggerDagRunOperator(
        task_id="trigger_train",
        trigger_dag_id="streamflow_train",
        conf={"month": "{{ ti.xcom_pull(task_ids='measure_drift')['month'] }}"},
        wait_for_completion=False,
        retries=0,
    )
    gate >> trigger


streamflow_drift()
