"""What StreamFlow tells people when the lifecycle does something they should know about (pure).

One builder per event: a rejected batch, a retrain request, a promotion waiting for approval, a
promotion, a rollback. Each takes the facts its task already produced (the rejection's reasons,
the drift check's result, the comparison's decision, the champion's summary) and returns a
`Message`: a subject, a plain-text body with the numbers in it, the same as HTML for mail, and the
facts as JSON for a webhook. Where a message goes is configuration (pipelines/notifiers.py); what
it says is decided here, without Airflow, a mail server or a network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

SUBJECT_PREFIX = "[StreamFlow]"
BATCH_REJECTED = "batch_rejected"
RETRAIN_REQUEST = "retrain_request"
APPROVAL_WAITING = "approval_waiting"
PROMOTION = "promotion"
ROLLBACK = "rollback"


@dataclass(frozen=True)
class Message:
    """One notification, in the forms each channel sends."""

    event: str
    subject: str
    lines: tuple[str, ...]
    facts: Mapping[str, Any]
    links: Mapping[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        links = [f"{name}: {url}" for name, url in self.links.items()]
        return "\n".join([*self.lines, *([""] + links if links else [])])

    @property
    def html(self) -> str:
        """The body for mail: the text as preformatted lines (tables and Markdown keep their
        columns) and the links as anchors, every value escaped."""
        links = "".join(
            f'<li>{escape(name)}: <a href="{escape(url)}">{escape(url)}</a></li>' for name, url in self.links.items()
        )
        return f"<pre>{escape(chr(10).join(self.lines))}</pre>" + (f"<ul>{links}</ul>" if links else "")

    def payload(self) -> dict[str, Any]:
        """The JSON a webhook receives: `text` is what a chat posts, `facts` what a program reads."""
        return {
            "event": self.event,
            "subject": self.subject,
            "text": f"{self.subject}\n{self.text}",
            "facts": dict(self.facts),
            "links": dict(self.links),
        }


def batch_rejected(month: str, reasons: Sequence[str], quarantined_to: str, links: Mapping[str, str]) -> Message:
    """A drop that failed validation: every failed expectation, where the drop was put aside."""
    count = len(reasons)
    return Message(
        BATCH_REJECTED,
        f"{SUBJECT_PREFIX} {month} rejected: {count} failed expectation{'s' if count != 1 else ''}",
        (
            f"The drop {month} failed validation and was not loaded; the warehouse is unchanged.",
            "",
            "Failed expectations:",
            *(f"- {reason}" for reason in reasons),
            "",
            f"Quarantined to {quarantined_to} (validation.json, report.html).",
            "Fix the files and run streamflow_ingest for the month again.",
        ),
        {"month": month, "reasons": list(reasons), "quarantined_to": quarantined_to},
        links,
    )


def retrain_request(result: Mapping[str, Any], links: Mapping[str, str]) -> Message:
    """The drift check's request to retrain (its result: the causes, the drift share against its
    threshold, the drifted columns, the champion's realized AUC against its validation AUC)."""
    month = result["month"]
    causes = list(result.get("causes") or [])
    drift_threshold, decay_threshold = result.get("drift_threshold"), result.get("decay_threshold")
    lines = [f"streamflow_drift requested a retrain on {month}: {result['reason']}", ""]
    if result.get("drift_share") is not None:
        drifted = ", ".join(result.get("drifted_columns") or []) or "none"
        lines += [
            f"Data drift against {result.get('reference_month')}: drift share {result['drift_share']:.3f} "
            f"(threshold {drift_threshold:.3f}); drifted columns: {drifted}",
        ]
    performance = result.get("performance") or {}
    if performance.get("status") == "measured":
        realized, validation = performance.get("auc"), performance.get("validation_auc")
        loss = f"loss {validation - realized:+.4f}, " if realized is not None and validation is not None else ""
        lines.append(
            f"Realized performance of champion v{performance.get('model_version', '?')} on {month}: AUC "
            f"{_auc(realized)} vs validation {_auc(validation)} "
            f"({loss}decay threshold {decay_threshold:.3f}, {performance.get('rows', '?')} rows)"
        )
    else:
        lines.append(f"Realized performance: not measured ({performance.get('reason', 'no champion')})")
    if result.get("report_path"):
        lines.append(f"Drift report: {result['report_path']}")
    lines += ["", f"streamflow_train now trains a challenger on {month}."]
    facts = {
        "month": month,
        "causes": causes,
        "reason": result["reason"],
        "reference_month": result.get("reference_month"),
        "drift_share": result.get("drift_share"),
        "drift_threshold": drift_threshold,
        "drifted_columns": list(result.get("drifted_columns") or []),
        "realized_auc": performance.get("auc"),
        "validation_auc": performance.get("validation_auc"),
        "decay_threshold": decay_threshold,
        "mlflow_run_id": result.get("mlflow_run_id"),
    }
    return Message(
        RETRAIN_REQUEST,
        f"{SUBJECT_PREFIX} {month}: retrain requested ({' and '.join(causes)})",
        tuple(lines),
        facts,
        links,
    )


def _comparison(decision: Mapping[str, Any]) -> str:
    champion = decision.get("champion_version")
    if not champion or decision.get("champion_auc") is None:
        return f"challenger AUC {_auc(decision.get('challenger_auc'))}, no champion to compare with"
    low, high = decision.get("auc_gain_ci") or [None, None]
    interval = f", interval [{low:+.4f}, {high:+.4f}]" if low is not None and high is not None else ""
    return (
        f"challenger AUC {_auc(decision.get('challenger_auc'))} vs champion v{champion} "
        f"{_auc(decision.get('champion_auc'))} (gain {decision.get('auc_gain', 0.0):+.4f}{interval})"
    )


def _auc(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"


def _decision_facts(decision: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("month", "version", "champion_version", "challenger_auc", "champion_auc", "auc_gain", "auc_gain_ci")
    return {key: decision.get(key) for key in keys} | {"rule": decision.get("reason")}


def approval_waiting(
    decision: Mapping[str, Any], request: str, respond_by: str | None, links: Mapping[str, str]
) -> Message:
    """A promotion waiting for a reviewer: the comparison in one line, until when, and the request
    itself (the Markdown the reviewer sees in Required Actions)."""
    month, version = decision["month"], decision["version"]
    return Message(
        APPROVAL_WAITING,
        f"{SUBJECT_PREFIX} approval waiting: promote {month} challenger v{version}?",
        (
            f"The rule would promote challenger v{version} ({month}): {_comparison(decision)}.",
            "It waits for a reviewer in Airflow (Browse -> Required Actions): Approve promotes it, "
            "Reject keeps the champion.",
            f"Without an answer by {respond_by} the champion stays." if respond_by else "The request has no timeout.",
            "",
            "The request:",
            "",
            request,
        ),
        _decision_facts(decision) | {"respond_by": respond_by},
        links,
    )


def promotion(
    champion: Mapping[str, Any], decision: Mapping[str, Any], review: Mapping[str, Any] | None, links: Mapping[str, str]
) -> Message:
    """A new champion: which version replaced which, the comparison that decided, who approved."""
    version, previous = champion["version"], champion.get("previous_version")
    if review and review.get("by"):
        said = f": {review['comment']}" if review.get("comment") else ""
        approved = f"approved by {review['by']} at {review.get('at')}{said}"
    else:
        approved = "promoted by the rule (approval: auto)"
    return Message(
        PROMOTION,
        f"{SUBJECT_PREFIX} v{version} ({champion.get('month')}) is the champion"
        + (f", replacing v{previous}" if previous else ""),
        (
            f"Version {version} of the churn model, trained on {champion.get('month')} (as_of "
            f"{champion.get('as_of')}), is the champion" + (f"; it replaces v{previous}." if previous else "."),
            f"Comparison: {_comparison(decision)}.",
            f"Rule: {decision.get('reason')}",
            f"Approval: {approved}",
            f"Served from the BentoML model {champion.get('bento_tag')}; the service swaps to it within its poll "
            "interval, and streamflow_score rescores the newest month.",
        ),
        _decision_facts(decision)
        | {"version": version, "previous_version": previous, "approved_by": (review or {}).get("by") or None},
        links,
    )


def rollback(champion: Mapping[str, Any], by: str, reason: str, links: Mapping[str, str]) -> Message:
    """The champion moved back: to which version, from which, who asked and why."""
    version, previous = champion["version"], champion.get("previous_version")
    return Message(
        ROLLBACK,
        f"{SUBJECT_PREFIX} rolled back: v{version} ({champion.get('month')}) is the champion"
        + (f" again, replacing v{previous}" if previous else " again"),
        (
            f"streamflow_rollback pointed the champion at version {version} (trained on {champion.get('month')})"
            + (f", away from v{previous}." if previous else "."),
            f"Asked by {by}: {reason}",
            f"Served from the BentoML model {champion.get('bento_tag')}; the service swaps to it within its poll "
            "interval, and streamflow_score rescores the newest month.",
        ),
        {"version": version, "previous_version": previous, "month": champion.get("month"), "by": by, "reason": reason},
        links,
    )
