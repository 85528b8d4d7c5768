"""
### StreamFlow: score every user of a month with the champion; the retention list

Scheduled on a new champion (the asset `streamflow_champion`, from `streamflow_train` or
`streamflow_rollback`) **or** a newly published month (`streamflow_features`), or run by hand.

* Which month: a published month's event scores that month; a new champion rescores the newest
  published month (not the month it was trained on: a rollback in June must score June); a manual
  run scores `month`, or the newest month when `month` is empty.
* Features: the champion's FeatureService, point-in-time at the month's `as_of` from Feast's
  offline store (the features the service reads online).
* `churn_scores`: one row per user (probability, rank 1 = riskiest, decile 1 = top tenth,
  `expected_loss` = probability x monthly fee x `STREAMFLOW_VALUE_HORIZON_MONTHS` and its
  `loss_rank`, the `arm` of a targeted user, model version, top-3 reasons), the month's partition
  replaced in one transaction with the month's `retention_campaigns` rows: re-runs are idempotent.
* The top `top_k` by `rank_by` are targeted; a seeded hash of (user_id, month) holds `control_share`
  of them back. `.streamflow/scores/<month>_top<k>.csv` is the contact list (treatment arm only),
  `<month>_top<k>_control.csv` the held-back users; both are artifacts of a run in the MLflow
  experiment `streamflow_scoring`.
* `rank_by` defaults to `expected_loss`: when a contact takes a share of a user's risk away, the
  revenue it saves is proportional to the expected loss, so that ranking saves the most.
* `control_share` defaults to 0.1: about 50 of a 500-user list, enough to see a large effect and to
  check the model's calibration, for a tenth of the list's calls (README "Retention economics").
* Campaign outcomes: every exported campaign whose next drop is loaded is measured (treated vs
  control churn, the difference with its interval, revenue saved) into `campaign_outcomes`.
* The month's predicted churn rate, scored users and campaign outcomes go to the Evidently dashboard.

No champion yet (the first month is still training): the run is skipped.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from streamflow_mlops.monitoring.campaigns import DEFAULT_CONTROL_SHARE, DEFAULT_RANK_BY, DEFAULT_TOP_K, RANK_BY
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
            DEFAULT_TOP_K,
            type="integer",
            minimum=1,
            maximum=1_000_000,
            description="Users targeted a month (the top of the list by rank_by), control arm included",
        ),
        "rank_by": Param(
            DEFAULT_RANK_BY,
            type="string",
            enum=list(RANK_BY),
            description="Order of the list: expected_loss (probability x fee x horizon) or probability",
        ),
        "control_share": Param(
            DEFAULT_CONTROL_SHARE,
            type="number",
            minimum=0.01,
            maximum=0.5,
            description="Share of the targeted users held back as the control arm (seeded hash of user and month)",
        ),
    },
)
def streamflow_score():
    @task
    def score(params=None, triggering_asset_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from streamflow_mlops.config.settings import get_settings
        from streamflow_mlops.pipelines.runs import month_to_score
        from streamflow_mlops.pipelines.score import NoChampionError, newest_loaded_month, score_month

        month = month_to_score(
            params["month"], triggering_asset_events, lambda: newest_loaded_month(get_settings().db_url)
        )
        try:
            return score_month(
                month,
                top_k=int(params["top_k"]),
                rank_by=params["rank_by"],
                control_share=float(params["control_share"]),
            )
        except NoChampionError as error:
            raise AirflowSkipException(str(error)) from error

    @task
    def update_dashboard(summary: dict) -> str:
        from streamflow_mlops.pipelines.score import add_scores_to_dashboard

        return add_scores_to_dashboard(summary)

    @task
    def measure_campaigns() -> list[dict]:
        from streamflow_mlops.pipelines.campaigns import measure_campaigns

        return measure_campaigns()

    scored = score()
    update_dashboard(scored)
    scored >> measure_campaigns()


streamflow_score()
