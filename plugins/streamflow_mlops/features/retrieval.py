"""Point-in-time reads from Feast's offline store: training sets and feature frames at a month's as_of."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from streamflow_mlops.config.months import month_as_of_ts, month_name, parse_month
from streamflow_mlops.config.schema import ENTITY, LABEL, TIMESTAMP
from streamflow_mlops.config.settings import FEATURE_SERVICE, WAREHOUSE_SCHEMA, Settings
from streamflow_mlops.features.store import feature_names, feature_store

if TYPE_CHECKING:
    import pandas as pd


# Feast cannot infer the timestamp column of a SQL entity dataframe (it sees only object dtypes), so
# the query names it the way Feast expects and the result is renamed back to the schema's `as_of`.
EVENT_TIMESTAMP = "event_timestamp"


def _entity_query(table: str, as_of: datetime, extra: Sequence[str] = ()) -> str:
    """SQL for an entity dataframe: a month's users at its as_of (Feast runs it server-side)."""
    columns = "".join(f", {c}" for c in extra)
    day = as_of.date().isoformat()
    return (
        f"SELECT {ENTITY}, TIMESTAMPTZ '{as_of.isoformat()}' AS {EVENT_TIMESTAMP}{columns} "
        f"FROM {WAREHOUSE_SCHEMA}.{table} WHERE {TIMESTAMP} = DATE '{day}'"
    )


def _historical(entity_sql: str, feature_service_name: str, settings: Settings | None) -> pd.DataFrame:
    store = feature_store(settings)
    job = store.get_historical_features(entity_df=entity_sql, features=store.get_feature_service(feature_service_name))
    frame = job.to_df().rename(columns={EVENT_TIMESTAMP: TIMESTAMP})
    if frame[TIMESTAMP].dt.tz is None:
        frame[TIMESTAMP] = frame[TIMESTAMP].dt.tz_localize("UTC")
    return frame.sort_values(ENTITY, kind="stable").reset_index(drop=True)


def build_training_set(
    month: str | int, feature_service_name: str = FEATURE_SERVICE, settings: Settings | None = None
) -> pd.DataFrame:
    """Point-in-time training set: the month's labelled users at its as_of, every feature of the
    FeatureService as of then (nothing later), and `churn_label`. Columns: user_id, as_of,
    features in the service's order, churn_label."""
    as_of = month_as_of_ts(month)
    frame = _historical(_entity_query("labels", as_of, [LABEL]), feature_service_name, settings)
    if frame.empty:
        raise ValueError(f"{month_name(parse_month(month))}: no labelled users at {as_of.date()}")
    names = feature_names(feature_service_name, settings)
    return frame[[ENTITY, TIMESTAMP, *names, LABEL]]


def feature_frame(
    month: str | int, feature_service_name: str = FEATURE_SERVICE, settings: Settings | None = None
) -> pd.DataFrame:
    """The month's users (from `users`) with their point-in-time features at as_of; no labels needed."""
    as_of = month_as_of_ts(month)
    frame = _historical(_entity_query("users", as_of), feature_service_name, settings)
    names = feature_names(feature_service_name, settings)
    return frame[[ENTITY, TIMESTAMP, *names]]
