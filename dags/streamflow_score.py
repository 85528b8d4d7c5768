"""
### StreamFlow: score every user of a month with the champion; the retention list

Scheduled on a new champion (the asset `streamflow_champion`, from `streamflow_train` or
`streamflow_rollback`) **or** a newly published month (`streamflow_features`), or run by hand.

* Which month: a published month's event scores that month; a new champion rescores the newest
  published month (not the month it was trained on: a rollback in June must score June); a manual
  run scores `month`, or the newest month when `month` is empty.
* Features: the champion's FeatureService, point-in-time at the month's `as_of` from Feast's
  offline store (the features the service reads online).
* `churn_scores`: one row per user (probability, rank 1 = riskiest, decile 1 = top tenth, model
  version, top-3 reasons), the month's partition replaced in one transaction: re-runs are idempotent.
* The ranked retention list, the top `top_k`: `.streamflow/scores/<month>_top<k>.csv` and an
  artifact of a run in the MLflow experiment `streamflow_scoring`.
* The month's predicted churn rate and scored users go to the Evidently dashboard.

No champion yet (the first month is still training): the run is skipped.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from streamflow_mlops.pipelines.dag_defaults import CHAMPION, FEATURES, dag_defaults


@dag(
    schedule=(CHAMPION | FEATURES),
    doc_md=__doc__,
    **dag_defaults("scoring", "mlflow"),
    params={
        "month": Param(
            "",
            type="string",
            pattern=r"^(month_\d{3})?$",
            description="Month to score; empty = the newest loaded month (asset-triggered runs decide themselves)",
        ),
        "top_k": Param(
            500,
            type="integer",
            minimum=1,
            maximum=1_000_000,
            # A retention team works through a few hundred calls a month: 500 is ~7% of a
            # 7,043-user month, inside its top decile.
            description="Length of the retention list (the riskiest users)",
        ),
    },
)
def streamflow_score():
    @task
    def score(params=None, triggering_asset_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from streamflow_mlops.config.settings import get_settings
        from streamflow_mlops.pipelines.score import NoChampionError, month_to_score, newest_loaded_month, score_month

        month = month_to_score(
            params["month"], triggering_asset_events, lambda: newest_loaded_month(get_settings().db_url)
        )
        try:
            return score_month(month, top_k=int(params["top_k"]))
        except NoChampionError as error:
            raise AirflowSkipException(str(error)) from error

    @task
    def update_dashboard(summary: dict) -> str:
        from streamflow_mlops.pipelines.score import add_scores_to_dashboard

        return add_scores_to_dashboard(summary)

    update_dashboard(score())


streamflow_score()
