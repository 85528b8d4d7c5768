"""What every StreamFlow DAG shares: the `@dag` defaults, the `month` Param, the Assets, and how a
task turns a failure that no retry can fix into `AirflowFailException`.

DAG files import this module at parse time, so it imports only the Airflow task SDK and the
standard library; tests/dags/test_dag_integrity.py checks that in a fresh interpreter.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Asset, Param
from airflow.sdk.exceptions import AirflowFailException

from streamflow_mlops.pipelines.runs import FEATURES_ASSET

ML_TEAM = "streamflow-ml"
DATA_TEAM = "streamflow-data"
TAG_PREFIX = "streamflow"
# Runs are driven by params and asset events, never by the calendar: the start date only has to
# lie in the past, and catchup stays off so that unpausing a DAG never backfills.
START_DATE = datetime(2024, 1, 1, tzinfo=UTC)
# Transient failures here are a restarting Postgres, MLflow server or Feast registry: one retry
# after 30 s outlasts those, and comes while a user watching a demo is still looking. Failures
# that a retry cannot fix (a rejected batch, an unknown version, an invalid param) skip the
# retry through `fail_at_once`.
RETRIES = 1
RETRY_DELAY = timedelta(seconds=30)
MONTH_PATTERN = r"^month_\d{3}$"

# The lifecycle as the UI's asset graph draws it, each event's `extra` carrying the month:
# ingest -> SNAPSHOTS -> features -> FEATURES -> drift -> RETRAIN_REQUEST -> train -> CHAMPION,
# and rollback -> CHAMPION.
SNAPSHOTS = Asset("streamflow_snapshots")
FEATURES = Asset(FEATURES_ASSET)
RETRAIN_REQUEST = Asset("streamflow_retrain_request")
CHAMPION = Asset("streamflow_champion")


def dag_defaults(*tags: str, owner: str = ML_TEAM) -> dict[str, Any]:
    """The `@dag` arguments every StreamFlow DAG shares; `tags` follow the `streamflow` tag."""
    return {
        "start_date": START_DATE,
        "catchup": False,
        "default_args": {"owner": owner, "retries": RETRIES, "retry_delay": RETRY_DELAY},
        "tags": [TAG_PREFIX, *tags],
    }


def force_param(description: str) -> Param:
    """The `force` Param: redo a step the pipeline would skip (an unchanged drop, an older month)."""
    return Param(False, type="boolean", title="Force", description=description)


def run_forced(params: Mapping[str, Any], triggering_asset_events: Mapping[Any, Any] | None) -> bool:
    """True when the run's `force` param is set, or the asset event that triggered it says so
    (a forced ingest forces the materialization it publishes)."""
    events = [e for group in (triggering_asset_events or {}).values() for e in group]
    return bool(params.get("force")) or any((getattr(e, "extra", None) or {}).get("force") for e in events)


def month_param(description: str) -> Param:
    """The `month` Param (a new object per DAG: a Param holds its value)."""
    return Param("month_000", type="string", pattern=MONTH_PATTERN, title="Month", description=description)


@contextmanager
def fail_at_once(*errors: type[Exception]) -> Iterator[None]:
    """Re-raise the library's deterministic `errors` as `AirflowFailException`: the task fails
    without retrying, with the library's message (the reasons) as its error."""
    try:
        yield
    except errors as error:
        raise AirflowFailException(str(error)) from error


def finite_number(params: Mapping[str, Any], name: str) -> float:
    """A number param as a float; NaN and infinity fail the task at once.

    Param validation cannot catch NaN: JSON-schema `minimum`/`maximum` comparisons are all false
    for it, so `{"delta": NaN}` (which `json.loads` accepts) passes the form's schema.
    """
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AirflowFailException(f"param {name!r} must be a finite number, got {value!r}")
    return float(value)


def run_month(params: Mapping[str, Any], triggering_asset_events: Mapping[Any, Any] | None) -> str:
    """The run's month name (`pipelines/runs.month_for_run`, a string because it travels in XCom);
    a malformed month fails the task at once."""
    from streamflow_mlops.pipelines.runs import month_for_run

    with fail_at_once(KeyError, ValueError):
        return month_for_run(params, triggering_asset_events).name
