"""Notifications delivered for real: the SMTP provider's notifier to a local SMTP server (aiosmtpd),
the webhook notifier to a local HTTP receiver; a channel that is down never stops the others."""

from __future__ import annotations

import logging

import pytest

from streamflow_mlops.config.settings import get_settings
from streamflow_mlops.monitoring import notifications
from streamflow_mlops.pipelines.notifiers import deliver
from tests.conftest import free_port
from tests.receivers import RECIPIENTS, notification_env, smtp_server, webhook_receiver

REASONS = ["payments_agg_90d.csv: expect_column_values_to_be_between(monthly_fee, min 0) failed 3 rows: -5.0 {#"]


@pytest.fixture
def configured(monkeypatch):
    """Both channels on, pointed at receivers started for the test."""
    with smtp_server() as (port, mail), webhook_receiver() as (url, posts):
        for name, value in notification_env(port, url).items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        yield {"mail": mail, "posts": posts}
    get_settings.cache_clear()


def test_a_message_arrives_by_mail_and_by_webhook_with_its_facts(configured):
    message = notifications.batch_rejected("month_002", REASONS, "/state/quarantine/month_002-1", {})

    assert deliver(message, {}, get_settings()) == ["smtp", "webhook"]

    (mail,) = configured["mail"].wait_for(lambda m: True)
    assert mail.subject == "[StreamFlow] month_002 rejected: 1 failed expectation"
    assert mail.sender == "streamflow@example.com" and sorted(mail.recipients) == sorted(RECIPIENTS)
    # Sent as written: the sample value's `{#` is not taken for a Jinja comment.
    assert "expect_column_values_to_be_between(monthly_fee, min 0) failed 3 rows: -5.0 {#" in mail.body
    (post,) = configured["posts"].wait_for(lambda p: True)
    assert post["event"] == "batch_rejected" and post["facts"]["reasons"] == REASONS


def test_a_channel_that_is_down_is_logged_and_the_other_still_delivers(configured, monkeypatch, caplog):
    monkeypatch.setenv("STREAMFLOW_NOTIFY_WEBHOOK_URL", f"http://127.0.0.1:{free_port()}/nobody-listens")
    get_settings.cache_clear()
    message = notifications.rollback({"version": "1", "month": "month_000"}, "bob", "odd scores", {})

    with caplog.at_level(logging.ERROR, logger="streamflow_mlops.pipelines.notifiers"):
        assert deliver(message, {}, get_settings()) == ["smtp"]

    assert configured["mail"].wait_for(lambda m: "Asked by bob: odd scores" in m.body)
    assert "not sent through webhook (127.0.0.1:" in caplog.text


def test_a_webhook_that_refuses_the_message_counts_as_not_sent(monkeypatch):
    with webhook_receiver(status=500) as (url, posts):
        monkeypatch.delenv("STREAMFLOW_NOTIFY_SMTP_CONN", raising=False)
        monkeypatch.setenv("STREAMFLOW_NOTIFY_WEBHOOK_URL", url)
        get_settings.cache_clear()
        try:
            message = notifications.rollback({"version": "1", "month": "month_000"}, "bob", "odd scores", {})
            assert deliver(message, {}, get_settings()) == []
            assert posts.wait_for(lambda p: p["facts"]["by"] == "bob"), "the receiver got it and answered 500"
        finally:
            get_settings.cache_clear()
