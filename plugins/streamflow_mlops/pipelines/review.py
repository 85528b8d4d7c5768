"""A person in the promotion loop: with `approval=human`, a challenger the rule would promote
waits for a reviewer in Airflow's own UI (Browse -> Required Actions), through the standard
provider's human-in-the-loop operator.

The request's body is the decision in full (both AUCs, the gain and its interval, the champion's
realized performance, links to the version and its model card). Approve promotes exactly as the
automatic path does; Reject keeps the champion; no answer within `approval_timeout` hours keeps
it too (the request has no default answer, so a timeout is never taken for a yes). Who answered,
when, and their comment become tags on the version either way, and its model card shows them.
While the request waits, the challenger carries the registry alias `shadow`: the service scores it
beside the champion on live traffic (serving/shadow.py); the answer, or the timeout, removes it.

DAG files import this module at parse time: only the Airflow SDK, the standard provider and the
standard library at the top.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowSkipException

from streamflow_mlops.config.settings import APPROVAL_MODES, REGISTERED_MODEL, get_settings

log = logging.getLogger(__name__)

APPROVE, REJECT = "Approve", "Reject"
# A week: a monthly decision can wait for the reviewer's return from a long weekend, not for the
# next month's data.
DEFAULT_APPROVAL_TIMEOUT_HOURS = 7 * 24


def approval_params() -> dict[str, Param]:
    """The training DAG's `approval` (default: STREAMFLOW_APPROVAL) and `approval_timeout` Params."""
    return {
        "approval": Param(
            get_settings().approval,
            type="string",
            enum=list(APPROVAL_MODES),
            title="Approval",
            description="auto: the rule promotes; human: a promotion waits for a reviewer (Required Actions)",
        ),
        "approval_timeout": Param(
            DEFAULT_APPROVAL_TIMEOUT_HOURS,
            type="number",
            exclusiveMinimum=0,
            title="Approval timeout (hours)",
            description="Without an answer by then the champion stays",
        ),
    }


@dataclass(frozen=True)
class Review:
    """A reviewer's answer to a promotion request (or its absence)."""

    outcome: str  # approved | rejected | timed_out
    by: str
    at: str
    comment: str

    @property
    def approved(self) -> bool:
        return self.outcome == "approved"

    @classmethod
    def from_answer(cls, answer: Mapping[str, Any]) -> Review:
        """From the review task's result (`PromotionReview.execute_complete`)."""
        if answer.get("timed_out"):
            return cls("timed_out", "", str(answer.get("at") or ""), "no answer within the approval timeout")
        chosen = list(answer.get("chosen_options") or [])
        outcome = "approved" if chosen == [APPROVE] else "rejected"
        return cls(outcome, str(answer.get("by") or ""), str(answer.get("at") or ""), str(answer.get("comment") or ""))

    def tags(self) -> dict[str, str]:
        """The audit trail on the version: `approval`, `approval_by`, `approval_at`, `approval_comment`."""
        return {
            "approval": self.outcome,
            "approval_by": self.by,
            "approval_at": self.at,
            "approval_comment": self.comment,
        }

    @property
    def reason(self) -> str:
        if self.outcome == "timed_out":
            return "no answer within the approval timeout: the champion stays"
        said = f": {self.comment}" if self.comment else ""
        return f"{self.outcome} by {self.by or 'an unknown user'} at {self.at}{said}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _number(value: Any, digits: int = 4, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{float(value):+.{digits}f}" if sign else f"{float(value):.{digits}f}"


def review_markdown(
    decision: Mapping[str, Any], realized: Sequence[Mapping[str, Any]], links: Mapping[str, str]
) -> str:
    """The approval request's body (Markdown): what the rule found, and where to read more (pure)."""
    interval = decision.get("auc_gain_ci") or [None, None]
    champion = decision.get("champion_version")
    lines = [
        f"**{decision.get('month')}: challenger v{decision.get('version')} would replace "
        f"{f'champion v{champion}' if champion else 'no champion'}.**",
        "",
        f"Rule: {decision.get('reason')}",
        "",
        "| | |",
        "| --- | --- |",
        f"| challenger AUC | {_number(decision.get('challenger_auc'))} |",
        f"| champion AUC | {_number(decision.get('champion_auc'))} |",
        f"| gain | {_number(decision.get('auc_gain'), sign=True)} "
        f"(interval [{_number(interval[0], sign=True)}, {_number(interval[1], sign=True)}], "
        f"required {_number(decision.get('delta'))}) |",
        f"| evaluated on | {decision.get('eval_rows')} rows of {decision.get('eval_population')} |",
        "",
        "**Realized performance of the champion** (labels that arrived after it was trained):",
        "",
    ]
    if realized:
        lines += ["| month | rows | AUC | validation AUC |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {r.get('month')} | {r.get('rows', 'n/a')} | {_number(r.get('auc'))} "
            f"| {_number(r.get('validation_auc'))} |"
            for r in realized
        ]
    else:
        lines.append("not measured yet (no later labels for the months it scored).")
    lines += impact_lines(decision.get("impact"))
    lines += ["", *(f"- {name}: {url}" for name, url in links.items())]
    lines += ["", "Approve to promote it now; Reject (with a comment) to keep the champion."]
    return "\n".join(lines)


def impact_lines(impact: Mapping[str, Any] | None) -> list[str]:
    """What the switch would change in the month's retention list (pipelines/impact.py)."""
    if not impact:
        return []
    before, after = impact["champion"], impact["challenger"]
    return [
        "",
        f"**What the switch changes in {impact['month']}** "
        f"({impact['users']} users, list ranked by {impact['rank_by']}):",
        "",
        f"- top {impact['top_k']}: {impact['top_k_leaving']} users would leave the list, "
        f"{impact['top_k_entering']} would enter it",
        f"- rank correlation (Spearman) of the two scorings: {_number(impact['spearman'])}",
        f"- churn decision flips: {impact['decision_flips']} ({impact['flips_to_churn']} to churn, "
        f"{impact['flips_to_stay']} to stay)",
        "",
        "| | champion | challenger |",
        "| --- | --- | --- |",
        f"| predicted churn rate | {_number(before['predicted_churn_rate'])} "
        f"| {_number(after['predicted_churn_rate'])} |",
        f"| mean probability (evaluation rows) | {_number(before['mean_probability'])} "
        f"| {_number(after['mean_probability'])} |",
        f"| observed churn rate (evaluation rows) | {_number(before['observed_churn_rate'])} "
        f"| {_number(after['observed_churn_rate'])} |",
        f"| Brier score | {_number(before['brier'])} | {_number(after['brier'])} |",
        f"| calibration error (10 bins) | {_number(before['calibration_error'])} "
        f"| {_number(after['calibration_error'])} |",
    ]


class PromotionReview(HITLOperator):
    """Asks a person to approve the promotion that `compare_with_champion` decided; skipped unless
    the run's `approval` is `human` and the rule would promote. Its result is a JSON dict:
    chosen_options, comment, by, at, timed_out."""

    def __init__(self, *, decision_task: str, **kwargs: Any) -> None:
        # The DAG's own params reach the task through the run's context; the form asks only for a comment.
        kwargs.pop("params", None)
        super().__init__(
            subject="Promote the churn model challenger?",
            options=[APPROVE, REJECT],
            params={
                "comment": Param(
                    "", type=["null", "string"], title="Comment", description="Why (kept on the version; optional)"
                )
            },
            # A review that fails (or is marked failed) never reaches execute_complete: the challenger's
            # `shadow` alias comes off here too, or the service would shadow it for good.
            on_failure_callback=self.end_shadow,
            **kwargs,
        )
        self.decision_task = decision_task

    def end_shadow(self, context: Any) -> None:
        decision = context["ti"].xcom_pull(task_ids=self.decision_task) or {}
        if decision.get("version") is not None:
            shadow_while_waiting(str(decision["version"]), waiting=False)

    def execute(self, context: Any) -> Any:
        decision = context["ti"].xcom_pull(task_ids=self.decision_task)
        params = context["params"]
        if params.get("approval") != "human":
            raise AirflowSkipException("approval is automatic: no review")
        if not decision or not decision.get("promote"):
            raise AirflowSkipException("the rule keeps the champion: nothing to review")
        self.subject = f"Promote {decision['month']} challenger v{decision['version']}?"
        self.body = review_request(decision)
        self.response_timeout = timedelta(hours=float(params.get("approval_timeout") or DEFAULT_APPROVAL_TIMEOUT_HOURS))
        shadow_while_waiting(str(decision["version"]), waiting=True)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        self.end_shadow(context)
        if event.get("error_type") == "timeout":
            return {"chosen_options": [], "comment": "", "by": "", "at": _utc_now(), "timed_out": True}
        answer = super().execute_complete(context=context, event=event)
        user = answer.get("responded_by_user") or {}
        return {
            "chosen_options": list(answer["chosen_options"]),
            "comment": str((answer.get("params_input") or {}).get("comment") or ""),
            "by": str(user.get("name") or user.get("id") or ""),
            "at": _iso(answer.get("responded_at")),
            "timed_out": False,
        }


def shadow_while_waiting(version: str, waiting: bool) -> None:
    """Point the `shadow` alias at the waiting challenger, or take it off once the request is answered
    (only if it still points there). Shadow scores inform the reviewer and never decide anything:
    MLflow failing here is logged and the review goes on."""
    from streamflow_mlops.model.registry import clear_shadow, set_shadow
    from streamflow_mlops.model.tracking import configure_mlflow

    try:
        client = configure_mlflow()
        if waiting:
            set_shadow(client, version)
            log.info("version %s is scored in shadow by the service while it waits for a reviewer", version)
        elif clear_shadow(client, version):
            log.info("version %s: review over, shadow scoring stops", version)
    except Exception:
        log.warning("shadow alias (%s) failed on v%s", "set" if waiting else "clear", version, exc_info=True)


def review_request(decision: Mapping[str, Any]) -> str:
    """The approval request's Markdown for a `promote` decision: the comparison, the champion's
    realized performance, links to the version in the MLflow UI and to its model card."""
    from streamflow_mlops.model.model_card import CARD_DIR, CARD_FILE
    from streamflow_mlops.pipelines.performance import realized_performance

    settings = get_settings()
    champion = decision.get("champion_version")
    realized = [r for r in realized_performance(settings.db_url) if champion and str(r["model_version"]) == champion]
    version, run_id = decision["version"], decision["run_id"]
    links = {
        "challenger in MLflow": f"{settings.mlflow_ui_url}/#/models/{REGISTERED_MODEL}/versions/{version}",
        "its model card": f"{settings.mlflow_ui_url}/#/experiments/0/runs/{run_id}/artifacts/{CARD_DIR}/{CARD_FILE}"
        f" (`runs:/{run_id}/{CARD_DIR}/{CARD_FILE}`)",
    }
    return review_markdown(decision, realized, links)


def record_review(decision: Mapping[str, Any], answer: Mapping[str, Any]) -> Review:
    """The reviewer's answer as tags on the challenger version (`approval*`), and in its model card."""
    from streamflow_mlops.model.model_card import publish_model_card
    from streamflow_mlops.model.tracking import configure_mlflow

    review = Review.from_answer(answer)
    client = configure_mlflow()
    version = str(decision["version"])
    tags = review.tags()
    if not review.approved:
        tags |= {"decision": "keep_champion", "reason": f"promotion {review.reason}"}
    for key, value in tags.items():
        client.set_model_version_tag(REGISTERED_MODEL, version, key, value)
    publish_model_card(client, version)
    log.info("version %s: promotion %s", version, review.reason)
    return review


def _utc_now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def _iso(moment: Any) -> str:
    return moment.isoformat(timespec="seconds") if hasattr(moment, "isoformat") else str(moment or "")
