"""Point-in-time reads from Feast's offline store: training sets and feature frames at a month's as_of."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from datetime import time as dt_time
from typing import TYPE_CHECKING

from streamflow_mlops.config.months import month_as_of_ts, month_name, parse_month
from streamflow_mlops.config.schema import ENTITY, LABEL, TIMESTAMP
from streamflow_mlops.config.settings import FEATURE_SERVICE, WAREHOUSE_SCHEMA, Settings, get_settings
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


def labels_as_of(month: str | int, settings: Settings | None = None) -> datetime:
    """The as_of of the labels the month's drop brought (its latest successful ingestion, DESIGN
    "Data"): the previous month's when drops carry a label lag, else (and for months loaded
    without an `ingestion_runs` row) the month's own as_of."""
    import psycopg

    month = month_name(parse_month(month))
    with psycopg.connect((settings or get_settings()).db_url) as conn:
        row = conn.execute(
            f"SELECT labels_as_of FROM {WAREHOUSE_SCHEMA}.ingestion_runs WHERE month = %s AND status = 'success' "
            "ORDER BY run_id DESC LIMIT 1",
            (month,),
        ).fetchone()
    if row is None or row[0] is None:
        return month_as_of_ts(month)
    return datetime.combine(row[0], dt_time.min, tzinfo=UTC)


def build_training_set(
    month: str | int, feature_service_name: str = FEATURE_SERVICE, settings: Settings | None = None
) -> pd.DataFrame:
    """Point-in-time training set: the labels the month's drop brought (`labels_as_of`), every
    feature of the FeatureService as of the labels' own as_of (nothing later), and `churn_label`.
    Columns: user_id, as_of (the labels'), features in the service's order, churn_label."""
    as_of = labels_as_of(month, settings)
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
