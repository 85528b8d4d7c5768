"""What each notification says (monitoring/notifications.py), and when notifications are on."""

from __future__ import annotations

import json

from streamflow_mlops.config.settings import DEFAULT_NOTIFY_FROM, get_settings
from streamflow_mlops.monitoring import notifications
from streamflow_mlops.pipelines.notifiers import channels

LINKS = {"Airflow task": "http://airflow.example/dags/streamflow_drift/runs/r1/tasks/request_retrain"}

DRIFT_RESULT = {
    "month": "month_001",
    "reference_month": "month_000",
    "drift_share": 0.5,
    "drifted_columns": ["monthly_fee", "watch_hours_30d", "rebuffer_events_7d"],
    "decision": "retrain",
    "reason": "drift: drift share 0.500 >= threshold 0.300; decay: realized AUC 0.8012 vs validation 0.8735 "
    "(loss +0.0723) > decay threshold 0.040",
    "performance": {"status": "measured", "model_version": "2", "auc": 0.8012, "validation_auc": 0.8735, "rows": 1409},
    "report_path": "/state/reports/drift/drift_month_001_vs_month_000_v2.html",
    "mlflow_run_id": "abc123",
    "causes": ["drift", "decay"],
    "drift_threshold": 0.3,
    "decay_threshold": 0.04,
}

DECISION = {
    "month": "month_001",
    "version": "3",
    "champion_version": "2",
    "challenger_auc": 0.8731,
    "champion_auc": 0.8012,
    "auc_gain": 0.0719,
    "auc_gain_ci": [0.061, 0.083],
    "delta": 0.005,
    "promote": True,
    "reason": "AUC gain +0.0719 >= delta 0.0050 (0.8731 vs 0.8012), 95% interval [+0.0610, +0.0830]",
}

CHAMPION = {
    "version": "3",
    "month": "month_001",
    "as_of": "2024-02-29",
    "bento_tag": "streamflow_churn:v3",
    "previous_version": "2",
}


def test_a_rejected_batch_lists_every_reason_and_where_the_drop_went():
    reasons = [
        "payments_agg_90d.csv: expect_column_values_to_be_between(monthly_fee, min 0) failed 12 rows: -5.0, -1.2",
        "users.csv: expect_column_values_to_be_unique(user_id) failed 1 row: 7590-VHVEG",
    ]
    message = notifications.batch_rejected("month_002", reasons, "/state/quarantine/month_002-1", LINKS)

    assert message.subject == "[StreamFlow] month_002 rejected: 2 failed expectations"
    assert all(f"- {reason}" in message.text for reason in reasons)
    assert "/state/quarantine/month_002-1" in message.text and "warehouse is unchanged" in message.text
    assert message.facts == {
        "month": "month_002",
        "reasons": reasons,
        "quarantined_to": "/state/quarantine/month_002-1",
    }
    assert notifications.batch_rejected("month_002", reasons[:1], "/q", {}).subject.endswith("1 failed expectation")


def test_a_retrain_request_says_which_gates_fired_with_their_numbers():
    message = notifications.retrain_request(DRIFT_RESULT, LINKS)

    assert message.subject == "[StreamFlow] month_001: retrain requested (drift and decay)"
    assert "drift share 0.500 (threshold 0.300)" in message.text
    assert "monthly_fee, watch_hours_30d, rebuffer_events_7d" in message.text
    assert "champion v2 on month_001: AUC 0.8012 vs validation 0.8735 (loss +0.0723" in message.text
    assert message.facts["causes"] == ["drift", "decay"] and message.facts["drift_share"] == 0.5
    assert message.facts["realized_auc"] == 0.8012 and message.facts["decay_threshold"] == 0.04


def test_a_first_training_request_has_no_drift_to_report():
    first = {"month": "month_000", "reason": "no champion yet: first training", "drift_share": None}
    first |= {"causes": ["first training"], "performance": {"status": "skipped", "reason": "no champion"}}
    message = notifications.retrain_request(first, {})
    assert message.subject.endswith("retrain requested (first training)")
    assert "Data drift" not in message.text and "not measured (no champion)" in message.text


def test_an_approval_request_carries_the_comparison_the_deadline_and_the_request_itself():
    request = "**month_001: challenger v3 would replace champion v2.**\n\n| challenger AUC | 0.8731 |"
    links = {"Required Actions": "http://airflow.example/dags/streamflow_train/runs/r/tasks/review/required_actions"}
    message = notifications.approval_waiting(DECISION, request, "2026-12-14T10:00:00+00:00", links)

    assert message.subject == "[StreamFlow] approval waiting: promote month_001 challenger v3?"
    assert "challenger AUC 0.8731 vs champion v2 0.8012 (gain +0.0719, interval [+0.0610, +0.0830])" in message.text
    assert "Without an answer by 2026-12-14T10:00:00+00:00 the champion stays." in message.text
    assert request in message.text and "required_actions" in message.text
    assert message.facts["respond_by"] == "2026-12-14T10:00:00+00:00"


def test_a_promotion_names_both_versions_and_who_approved():
    review = {"by": "alice", "at": "2026-12-07T10:00:00+00:00", "comment": "looks right", "chosen_options": ["Approve"]}
    message = notifications.promotion(CHAMPION, DECISION, review, LINKS)

    assert message.subject == "[StreamFlow] v3 (month_001) is the champion, replacing v2"
    assert "approved by alice at 2026-12-07T10:00:00+00:00: looks right" in message.text
    assert "gain +0.0719" in message.text and "streamflow_churn:v3" in message.text
    assert message.facts["approved_by"] == "alice" and message.facts["previous_version"] == "2"
    automatic = notifications.promotion(CHAMPION, DECISION, None, {})
    assert "promoted by the rule (approval: auto)" in automatic.text and automatic.facts["approved_by"] is None


def test_a_first_promotion_has_nothing_to_replace():
    first = notifications.promotion(
        CHAMPION | {"previous_version": None},
        {"month": "month_000", "version": "1", "challenger_auc": 0.86, "reason": "no champion yet"},
        None,
        {},
    )
    assert first.subject == "[StreamFlow] v3 (month_001) is the champion"
    assert "challenger AUC 0.8600, no champion to compare with" in first.text


def test_a_rollback_says_from_which_version_who_and_why():
    message = notifications.rollback(CHAMPION | {"version": "1", "month": "month_000"}, "bob", "odd scores", LINKS)
    assert message.subject == "[StreamFlow] rolled back: v1 (month_000) is the champion again, replacing v2"
    assert "away from v2" in message.text and "Asked by bob: odd scores" in message.text
    assert message.facts == {
        "version": "1",
        "previous_version": "2",
        "month": "month_000",
        "by": "bob",
        "reason": "odd scores",
    }


def test_mail_escapes_what_it_quotes_and_the_webhook_gets_json():
    message = notifications.batch_rejected("month_002", ["users.csv: plan <b>{{ x }}</b> & more"], "/q", LINKS)
    assert "&lt;b&gt;{{ x }}&lt;/b&gt; &amp; more" in message.html and "<b>" not in message.html
    assert f'<a href="{LINKS["Airflow task"]}">' in message.html
    payload = json.loads(json.dumps(message.payload()))
    assert payload["event"] == "batch_rejected" and payload["text"].startswith(message.subject)
    assert payload["facts"]["month"] == "month_002" and payload["links"] == LINKS


def test_notifications_are_off_unless_a_channel_is_configured(monkeypatch):
    for name in ("STREAMFLOW_NOTIFY_SMTP_CONN", "STREAMFLOW_NOTIFY_TO", "STREAMFLOW_NOTIFY_WEBHOOK_URL"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    try:
        assert channels(get_settings()) == [] and get_settings().notify_from == DEFAULT_NOTIFY_FROM
        monkeypatch.setenv("STREAMFLOW_NOTIFY_WEBHOOK_URL", "https://hooks.example/T1")
        get_settings.cache_clear()
        assert channels(get_settings()) == ["webhook"]
        monkeypatch.setenv("STREAMFLOW_NOTIFY_SMTP_CONN", "streamflow_smtp")
        monkeypatch.setenv("STREAMFLOW_NOTIFY_TO", " a@example.com, ,b@example.com ")
        get_settings.cache_clear()
        assert channels(get_settings()) == ["smtp", "webhook"]
        assert get_settings().notify_to == ("a@example.com", "b@example.com")
    finally:
        get_settings.cache_clear()


def test_a_mail_channel_without_recipients_is_left_out_never_an_error(monkeypatch, caplog):
    monkeypatch.setenv("STREAMFLOW_NOTIFY_SMTP_CONN", "streamflow_smtp")
    monkeypatch.delenv("STREAMFLOW_NOTIFY_TO", raising=False)
    monkeypatch.setenv("STREAMFLOW_NOTIFY_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    get_settings.cache_clear()
    try:
        assert channels(get_settings()) == ["webhook"]  # settings load: DAGs and tasks go on
        assert "has no STREAMFLOW_NOTIFY_TO" in caplog.text
    finally:
        get_settings.cache_clear()
