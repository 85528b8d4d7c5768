"""Telling people what the lifecycle did, through Airflow's notifier mechanism.

Each StreamFlow notifier is a `BaseNotifier` wired in a DAG file as a task callback (or, for the
review, as the human-in-the-loop operator's `notifiers`): it reads the facts of its event from the
run (the task's result, the decision, the rejection), has monitoring/notifications.py write the
message, and hands it to every configured channel:

* mail: the SMTP provider's `SmtpNotifier` through the Airflow connection
  `STREAMFLOW_NOTIFY_SMTP_CONN` (host, port, TLS and credentials live in `AIRFLOW_CONN_<ID>`), to
  `STREAMFLOW_NOTIFY_TO`, from `STREAMFLOW_NOTIFY_FROM`;
* a webhook: `WebhookNotifier` POSTs the message as JSON to `STREAMFLOW_NOTIFY_WEBHOOK_URL`.

No channel configured, nothing is sent (off by default). The settings are read when the event
happens, not when the DAG is parsed, so turning notifications on needs no DAG change. A channel
that fails is logged and never fails the task: a mail server being down must not undo a load, a
promotion or a rollback, nor fail the review that waits for a person.

DAG files import this module at parse time: only the Airflow SDK and the standard library at the top.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.sdk import BaseNotifier

if TYPE_CHECKING:
    from streamflow_mlops.config.settings import Settings
    from streamflow_mlops.monitoring.notifications import Message

log = logging.getLogger(__name__)

# A webhook that does not answer within this is down for this message; the task's callback, and the
# review waiting behind it, must not hang on it.
WEBHOOK_TIMEOUT_SECONDS = 10.0


class WebhookNotifier(BaseNotifier):
    """POSTs a JSON payload to a URL (a chat's incoming webhook, an alerting gateway, a receiver of
    one's own); a non-2xx answer is an error."""

    def __init__(self, url: str, payload: Mapping[str, Any], timeout: float = WEBHOOK_TIMEOUT_SECONDS) -> None:
        super().__init__()
        self.url = url
        self.payload = dict(payload)
        self.timeout = timeout

    def notify(self, context: Any) -> None:
        import httpx

        httpx.post(self.url, json=self.payload, timeout=self.timeout).raise_for_status()


def channels(settings: Settings) -> list[str]:
    """The configured channels: `smtp`, `webhook`; empty means notifications are off. A mail channel
    without recipients is half a configuration: left out with a warning, never an error that would
    fail the task (or, read at parse time, a DAG)."""
    mail = bool(settings.notify_smtp_conn)
    if mail and not settings.notify_to:
        log.warning(
            "STREAMFLOW_NOTIFY_SMTP_CONN=%s has no STREAMFLOW_NOTIFY_TO (comma-separated recipients): no mail sent",
            settings.notify_smtp_conn,
        )
        mail = False
    return [name for name, on in (("smtp", mail), ("webhook", settings.notify_webhook_url)) if on]


def deliver(message: Message, context: Any, settings: Settings) -> list[str]:
    """Send `message` to every configured channel; returns the channels that took it."""
    sent = []
    for channel in channels(settings):
        try:
            if channel == "smtp":
                from airflow.providers.smtp.notifications.smtp import SmtpNotifier

                # `notify`, not the notifier's __call__: that would render the subject and body as Jinja
                # templates, and a rejection's sample values or a Markdown table may contain `{{` or `{#`.
                SmtpNotifier(
                    to=list(settings.notify_to),
                    from_email=settings.notify_from,
                    subject=message.subject,
                    html_content=message.html,
                    smtp_conn_id=settings.notify_smtp_conn,
                ).notify(context)
            else:
                WebhookNotifier(settings.notify_webhook_url or "", message.payload()).notify(context)
        except Exception:
            where = settings.notify_smtp_conn if channel == "smtp" else urlsplit(settings.notify_webhook_url).netloc
            log.exception("%s: not sent through %s (%s)", message.subject, channel, where)
        else:
            sent.append(channel)
            log.info("%s: sent through %s", message.subject, channel)
    return sent


class StreamflowNotifier(BaseNotifier, ABC):
    """A lifecycle event told to the configured channels; subclasses say what the message is."""

    def notify(self, context: Any) -> None:
        from streamflow_mlops.config.settings import get_settings

        settings = get_settings()
        if not channels(settings):
            return
        try:
            message = self.message(context)
        except Exception:
            log.exception("%s: no message (the event's facts could not be read)", type(self).__name__)
            return
        if message is not None:
            deliver(message, context, settings)

    @abstractmethod
    def message(self, context: Any) -> Message | None:
        """The event's message from the task's context; None when there is nothing to tell."""


def run_links(context: Any) -> dict[str, str]:
    """Where to look in Airflow: the task of the run that raised the event."""
    ti = context.get("ti")
    return {"Airflow task": ti.log_url} if ti is not None else {}


def version_link(version: str) -> dict[str, str]:
    from streamflow_mlops.config.settings import REGISTERED_MODEL, get_settings

    return {"version in MLflow": f"{get_settings().mlflow_ui_url}/#/models/{REGISTERED_MODEL}/versions/{version}"}


class BatchRejectedNotifier(StreamflowNotifier):
    """`on_failure_callback` of ingestion's validation: a rejected batch, with its reasons. Other
    failures (a missing folder, a database down) are Airflow's usual failed task, not a rejection."""

    def message(self, context: Any) -> Message | None:
        from streamflow_mlops.data.ingest import BatchRejected
        from streamflow_mlops.monitoring import notifications

        error = context.get("exception")
        # `fail_at_once` re-raises the rejection as AirflowFailException, the rejection as its cause.
        while error is not None and not isinstance(error, BatchRejected):
            error = error.__cause__
        if error is None:
            return None
        return notifications.batch_rejected(error.month, error.reasons, error.quarantined_to, run_links(context))


class RetrainRequestNotifier(StreamflowNotifier):
    """`on_success_callback` of the drift DAG's request: the numbers from `result_task`'s check."""

    def __init__(self, result_task: str) -> None:
        super().__init__()
        self.result_task = result_task

    def message(self, context: Any) -> Message:
        from streamflow_mlops.monitoring import notifications

        return notifications.retrain_request(context["ti"].xcom_pull(task_ids=self.result_task), run_links(context))


class ApprovalWaitingNotifier(StreamflowNotifier):
    """In the review's `notifiers`: called once the request is recorded, before the task waits."""

    def __init__(self, decision_task: str) -> None:
        super().__init__()
        self.decision_task = decision_task

    def message(self, context: Any) -> Message:
        from streamflow_mlops.monitoring import notifications

        review, ti = context["task"], context["ti"]
        decision = ti.xcom_pull(task_ids=self.decision_task)
        links = {"Required Actions": review.generate_link_to_ui(task_instance=ti, base_url=airflow_base_url())}
        respond_by = (getattr(review, "hitl_summary_extra", None) or {}).get("timeout_datetime")
        return notifications.approval_waiting(
            decision, review.body or "", respond_by, links | version_link(decision["version"])
        )


class PromotionNotifier(StreamflowNotifier):
    """`on_success_callback` of `promote` (a kept champion is skipped, not a success): the new
    champion, the decision of `decision_task` and the answer of `review_task` (None when skipped)."""

    def __init__(self, decision_task: str, review_task: str) -> None:
        super().__init__()
        self.decision_task = decision_task
        self.review_task = review_task

    def message(self, context: Any) -> Message:
        from streamflow_mlops.monitoring import notifications

        ti = context["ti"]
        champion = ti.xcom_pull(task_ids=ti.task_id)
        decision = ti.xcom_pull(task_ids=self.decision_task)
        answer = ti.xcom_pull(task_ids=self.review_task)
        links = run_links(context) | version_link(champion["version"])
        return notifications.promotion(champion, decision, answer, links)


class RollbackNotifier(StreamflowNotifier):
    """`on_success_callback` of the rollback: the version served again, from which, who and why."""

    def message(self, context: Any) -> Message:
        from streamflow_mlops.monitoring import notifications

        ti = context["ti"]
        champion = ti.xcom_pull(task_ids=ti.task_id)
        links = run_links(context) | version_link(champion["version"])
        return notifications.rollback(champion, champion["by"], champion["reason"], links)


def airflow_base_url() -> str:
    """The Airflow UI's address in links: Airflow's own `[api] base_url`, else the local api-server."""
    from airflow.sdk.configuration import conf

    from streamflow_mlops.config.settings import get_settings

    return conf.get("api", "base_url", fallback=None) or f"http://127.0.0.1:{get_settings().airflow_port}"
