"""
### StreamFlow: train a challenger, compare with the champion, promote through the alias

Scheduled on the asset `streamflow_retrain_request` (emitted by `streamflow_drift` when its gate
says retrain): the month comes from the asset event's `extra`. Run by hand, it takes the
`month` param. One run at a time: two concurrent runs would both compare with the same old
champion and the later promotion would silently win.

1. Point-in-time training set from Feast (the `churn_model_v1` FeatureService) for the month's
   `as_of`, joined with labels; the month's rows of the evaluation holdout (20% of users, by a
   hash of `user_id`, that no model ever trains on) are kept aside, the threshold comes from
   out-of-fold scores of the training rows; a scikit-learn Pipeline (preprocessing + classifier)
   logged whole to MLflow (experiment `streamflow`) and registered as a version of `streamflow_churn`.
2. The champion (alias `champion`) is scored on exactly the challenger's evaluation rows.
   `should_promote`: no champion -> promote; otherwise the AUC gain must be >= `delta` and a
   seeded paired bootstrap must say the gain is not noise. Both AUCs, the gain, its confidence
   interval, the decision and its reason are tags on the challenger version.
3. With `approval` = `human` (default: the STREAMFLOW_APPROVAL setting, `auto` in the demo), a
   challenger the rule would promote waits in `review` (state `awaiting_input`, holding no worker
   slot) for a person: Browse -> Required Actions in this UI, or the REST API's `hitlDetails`.
   Approve promotes; Reject, or no answer within `approval_timeout` hours, keeps the champion.
   Who answered, when and why are tags on the version (`approval*`) and in its model card.
4. On promotion the alias moves, the old champion is tagged with when it was replaced, the new
   champion is imported into the BentoML model store, and the asset `streamflow_champion` is
   emitted. A kept champion skips this step (no event).
5. With notifications configured (README "Notifications"), a review waiting for a person and a
   promotion are mailed or posted.

A challenger of a month older than the champion's is kept out unless `force`; a champion that
can't be scored on the challenger's rows stays and the run fails with the reason; a champion that
moved since the comparison (another run, a rollback) is not overwritten (the run fails, nothing
changed). A retried `promote` finds its move already made and changes nothing.

`delta` 0.005: an AUC gain below half a point is within what a reseeded split moves; a NaN
`delta` (which passes the form's schema) fails the run at once instead of promoting anything.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from streamflow_mlops.pipelines.dag_defaults import (
    CHAMPION,
    RETRAIN_REQUEST,
    dag_defaults,
    fail_at_once,
    finite_number,
    force_param,
    month_param,
    run_month,
)
from streamflow_mlops.pipelines.notifiers import ApprovalWaitingNotifier, PromotionNotifier
from streamflow_mlops.pipelines.review import PromotionReview, approval_params


@dag(
    schedule=[RETRAIN_REQUEST],
    max_active_runs=1,
    doc_md=__doc__,
    params={
        "month": month_param("Month to train on; an asset-triggered run takes it from the event"),
        "seed": Param(42, type="integer", minimum=0, description="Split and model seed"),
        "delta": Param(
            0.005,
            type="number",
            minimum=0,
            maximum=1,
            description="Minimum validation-AUC gain over the champion to promote",
        ),
        "force": force_param("Compare even a challenger of a month older than the champion's"),
        **approval_params(),
    },
    **dag_defaults("training", "mlflow"),
)
def streamflow_train():
    @task
    def train_challenger(params=None, triggering_asset_events=None) -> dict:
        from streamflow_mlops.pipelines.train import train_and_register

        finite_number(params, "delta")  # before the training, not after it
        return train_and_register(run_month(params, triggering_asset_events), seed=int(params["seed"]))

    @task
    def compare_with_champion(challenger: dict, params=None) -> dict:
        from streamflow_mlops.pipelines.train import ChampionUnscorableError, evaluate_and_decide

        with fail_at_once(ChampionUnscorableError):
            return evaluate_and_decide(challenger, delta=finite_number(params, "delta"), force=bool(params["force"]))

    # Runs after a skipped review (automatic approval, or nothing to approve), not after a failed one.
    @task(
        outlets=[CHAMPION],
        trigger_rule="none_failed",
        on_success_callback=PromotionNotifier(decision_task="compare_with_champion", review_task="review"),
    )
    def promote(decision: dict, answer: dict | None, run_id=None, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from streamflow_mlops.pipelines.champion import ChampionMovedError, promote_and_import
        from streamflow_mlops.pipelines.review import record_review

        if not decision["promote"]:
            raise AirflowSkipException(f"kept the champion: {decision['reason']}")
        review = record_review(decision, answer) if answer else None
        if review is not None and not review.approved:
            raise AirflowSkipException(f"kept the champion: promotion {review.reason}")
        with fail_at_once(ChampionMovedError):
            champion = promote_and_import(decision, request=run_id, review=review.tags() if review else None)
        outlet_events[CHAMPION].extra = {"version": champion["version"], "month": champion["month"]}
        return champion

    decision = compare_with_champion(train_challenger())
    review = PromotionReview(
        task_id="review",
        decision_task="compare_with_champion",
        notifiers=[ApprovalWaitingNotifier(decision_task="compare_with_champion")],
    )
    decision >> review
    promote(decision, review.output)


streamflow_train()
