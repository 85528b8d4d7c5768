"""The DAG-side rules in `streamflow_mlops.pipelines.dag_defaults`, with Airflow's own types and no database:
which month a run works on, and which failures skip the retry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from airflow.sdk.exceptions import AirflowFailException
from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

from streamflow_mlops.pipelines.dag_defaults import (
    RETRAIN_REQUEST,
    SNAPSHOTS,
    dag_defaults,
    fail_at_once,
    finite_number,
    month_param,
    run_month,
)

T0 = datetime(2024, 3, 1, tzinfo=UTC)


def event(asset, extra: dict, minutes: int = 0) -> AssetEventDagRunReferenceResult:
    """An asset event as the execution API hands it to a task of the triggered run."""
    return AssetEventDagRunReferenceResult(
        asset={"name": asset.name, "uri": asset.uri, "extra": {}},
        extra=extra,
        source_task_id="request_retrain",
        source_dag_id="streamflow_drift",
        source_run_id="manual__1",
        source_map_index=-1,
        source_aliases=[],
        timestamp=T0 + timedelta(minutes=minutes),
    )


def triggering(*events: AssetEventDagRunReferenceResult) -> TriggeringAssetEventsAccessor:
    return TriggeringAssetEventsAccessor.build(events)


def test_an_asset_triggered_run_takes_the_month_of_its_event():
    events = triggering(event(RETRAIN_REQUEST, {"month": "month_001", "reason": "drift share 0.500 >= 0.300"}))
    assert run_month({"month": "month_000"}, events) == "month_001"


def test_the_newest_event_wins_whatever_order_they_come_in():
    events = triggering(
        event(RETRAIN_REQUEST, {"month": "month_003"}, minutes=2),
        event(RETRAIN_REQUEST, {"month": "month_002"}, minutes=1),
    )
    assert run_month({"month": "month_000"}, events) == "month_003"


def test_a_manual_run_takes_its_month_param():
    assert run_month({"month": "month_004"}, triggering()) == "month_004"
    assert run_month({"month": "month_004"}, None) == "month_004"


def test_an_event_without_a_month_falls_back_to_the_param():
    assert run_month({"month": "month_005"}, triggering(event(SNAPSHOTS, {}))) == "month_005"


def test_a_malformed_month_fails_at_once():
    with pytest.raises(AirflowFailException):
        run_month({"month": "month_000"}, triggering(event(SNAPSHOTS, {"month": "2024-02"})))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), True, "0.1", None])
def test_a_number_param_that_is_not_a_finite_number_fails_at_once(value):
    with pytest.raises(AirflowFailException, match="delta"):
        finite_number({"delta": value}, "delta")


def test_a_finite_number_param_is_a_float():
    assert finite_number({"delta": 0}, "delta") == 0.0
    assert finite_number({"drift_threshold": 0.3}, "drift_threshold") == 0.3


def test_only_the_named_errors_skip_the_retry():
    with pytest.raises(AirflowFailException, match="no version '9'"):
        with fail_at_once(LookupError):
            raise KeyError("no version '9'")
    with pytest.raises(ConnectionError):  # transient: left to Airflow's retries
        with fail_at_once(LookupError):
            raise ConnectionError("server closed the connection")


def test_every_dag_retries_and_the_month_param_validates():
    defaults = dag_defaults("training", owner="streamflow-ml")
    assert defaults["catchup"] is False and defaults["tags"] == ["streamflow", "training"]
    assert defaults["default_args"]["retries"] >= 1 and defaults["default_args"]["retry_delay"].total_seconds() > 0
    assert month_param("x") is not month_param("x"), "each DAG needs its own Param object"
    assert month_param("x").resolve("month_012") == "month_012"
    with pytest.raises(ValueError):
        month_param("x").resolve("month_12")
