"""How a DAG run decides which month it works on (pure; no Airflow import)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def month_for_run(params: Mapping[str, Any], triggering_events: Mapping[Any, Iterable[Any]] | None) -> str:
    """The month of the asset event that triggered the run, else the `month` param.

    An asset-triggered run carries its month in the event's `extra`; the newest event wins
    when several queued up. A manual run uses the form's `month`.
    """
    from streamflow_mlops.config.months import month_name, parse_month

    events = [e for group in (triggering_events or {}).values() for e in group]
    # The execution API hands the run's events over in no promised order: sort by time.
    events.sort(key=lambda e: e.timestamp)
    months = [e.extra["month"] for e in events if getattr(e, "extra", None) and e.extra.get("month")]
    return month_name(parse_month(months[-1] if months else params["month"]))
