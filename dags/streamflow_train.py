"""
### StreamFlow: train a challenger, compare with the champion, promote through the alias

1. Point-in-time training set from Feast (the `churn_model_v1` FeatureService) for the month's
   `as_of`, joined with labels; stratified split seeded by `seed`; a scikit-learn Pipeline
   (preprocessing + classifier) logged whole to MLflow (experiment `streamflow`) and registered
   as a version of `streamflow_churn`.
2. The champion (alias `champion`) is scored on exactly the challenger's validation rows.
   `should_promote`: no champion -> promote; otherwise the AUC gain must be >= `delta` and a
   seeded paired bootstrap must say the gain is not noise. Both AUCs, the gain, its confidence
   interval, the decision and its reason are tags on the challenger version.
3. On promotion the alias moves, the old champion is tagged with when it was replaced, the new
   champion is imported into the BentoML model store, and the asset `streamflow_champion` is
   emitted. A skipped promotion skips this step.
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
    tags=["streamflow", "training", "mlflow"],
    params={
        "month": Param("month_000", type="string", pattern=r"^month_\d{3}$", description="Month to train on"),
        "seed": Param(42, type="integer", minimum=0, description="Split and model seed"),
        "delta": Param(
            0.005,
            type="number",
            minimum=0,
            maximum=1,
            description="Minimum validation-AUC gain over the champion to promote",
        ),
    },
)
def streamflow_train():
    @task
    def train_challenger(params=None) -> dict:
        from streamflow_mlops.pipelines.train import train_and_register

        # A run triggered by the drift gate passes conf {"month": ...}; Airflow merges it into params.
        return train_and_register(params["month"], seed=int(params["seed"]))

    @task
    def compare_with_champion(challenger: dict, params=None) -> dict:
        from streamflow_mlops.pipelines.train import evaluate_and_decide

        return evaluate_and_decide(challenger, delta=float(params["delta"]))

    @task(outlets=[CHAMPION])
    def promote(decision: dict, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from streamflow_mlops.pipelines.champion import promote_and_import

        if not decision["promote"]:
            raise AirflowSkipException(f"kept the champion: {decision['reason']}")
        champion = promote_and_import(decision)
        outlet_events[CHAMPION].extra = {"version": champion["version"], "month": champion["month"]}
        return champion

    promote(compare_with_champion(train_challenger()))


streamflow_train()
