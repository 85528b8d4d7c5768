"""Which month a DAG run works on, parsed once from its params or asset events (pure; no Airflow import)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from streamflow_mlops.config.months import Month

FEATURES_ASSET = "streamflow_features"


def asset_name(key: Any, event: Any) -> str:
    """The name of the asset an event belongs to (Airflow keys events by Asset; events also carry it)."""
    return getattr(getattr(event, "asset", None), "name", None) or getattr(key, "name", None) or str(key)


def _event_month(event: Any) -> str | None:
    return (getattr(event, "extra", None) or {}).get("month") or None


def month_for_run(params: Mapping[str, Any], triggering_events: Mapping[Any, Iterable[Any]] | None) -> Month:
    """The month of the asset event that triggered the run, else the `month` param.

    An asset-triggered run carries its month in the event's `extra`; the newest event wins
    when several queued up. A manual run uses the form's `month`.
    """
    events = [e for group in (triggering_events or {}).values() for e in group]
    # The execution API hands the run's events over in no promised order: sort by time.
    events.sort(key=lambda e: e.timestamp)
    months = [m for m in map(_event_month, events) if m]
    return Month.parse(months[-1] if months else params["month"])


def month_to_score(
    param_month: str | None,
    triggering_events: Mapping[Any, Iterable[Any]] | None,
    newest_month: Callable[[], Month | None],
) -> Month:
    """The month a scoring run works on.

    A newly published month (an event of the `streamflow_features` asset) is scored as such; a
    new champion (promotion or rollback) rescores the newest published month, not the month it
    was trained on (its event's `month`): a January model rolled back to in June must score June.
    A manual run scores its `month` param, and an empty param the newest published month.
    """
    published = [
        Month.parse(month)
        for asset, events in (triggering_events or {}).items()
        for event in events
        if asset_name(asset, event) == FEATURES_ASSET and (month := _event_month(event))
    ]
    if published:
        return max(published)
    if param_month and not triggering_events:
        return Month.parse(param_month)
    newest = newest_month()
    if newest is None:
        raise LookupError("no month is loaded in the warehouse yet")
    return newest
