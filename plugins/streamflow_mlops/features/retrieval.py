"""Point-in-time reads from Feast's offline store: training sets and feature frames at a month's as_of.

The entity rows are a SQL query Feast runs where the tables are: Postgres's warehouse, or (spark
engine) Spark SQL over the lake's Parquet; the same users, timestamps and sample either way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from datetime import time as dt_time
from typing import TYPE_CHECKING

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY, LABEL, TIMESTAMP
from streamflow_mlops.config.settings import FEATURE_SERVICE, WAREHOUSE_SCHEMA, Settings, get_settings
from streamflow_mlops.features.definitions import lake_table_sql
from streamflow_mlops.features.store import feature_names, feature_store

if TYPE_CHECKING:
    import pandas as pd


# Feast cannot infer the timestamp column of a SQL entity dataframe (it sees only object dtypes), so
# the query names it the way Feast expects and the result is renamed back to the schema's `as_of`.
EVENT_TIMESTAMP = "event_timestamp"


def table_sql(table: str, settings: Settings) -> str:
    """How the engine's SQL names a table: `streamflow.users`, or the lake path for Spark (pure)."""
    if settings.engine == "spark":
        return lake_table_sql(settings.lake_url, table)
    return f"{WAREHOUSE_SCHEMA}.{table}"


def _entity_query(table: str, as_of: datetime, settings: Settings, extra: Sequence[str] = (), where: str = "") -> str:
    """SQL for an entity dataframe: a month's users at its as_of (Feast runs it where the tables are)."""
    columns = "".join(f", {c}" for c in extra)
    day = as_of.date().isoformat()
    condition = f" AND {where}" if where else ""
    timestamp = "TIMESTAMP" if settings.engine == "spark" else "TIMESTAMPTZ"
    return (
        f"SELECT {ENTITY}, {timestamp} '{as_of.isoformat()}' AS {EVENT_TIMESTAMP}{columns} "
        f"FROM {table_sql(table, settings)} WHERE {TIMESTAMP} = DATE '{day}'{condition}"
    )


def iter_historical(
    entity_sql: str, feature_service_name: str, settings: Settings | None = None, chunk_rows: int | None = None
) -> Iterator[pd.DataFrame]:
    """Feast's point-in-time join of the entity rows, as frames of at most `chunk_rows` rows
    (the `STREAMFLOW_CHUNK_ROWS` setting) in user_id order across the whole result: the join and
    the sort run in Postgres, the task holds one chunk (extensions/feast/offline_store.py)."""
    settings = settings or get_settings()
    store = feature_store(settings)
    if settings.engine == "spark":
        from streamflow_mlops.data.spark import spark_session

        spark_session(settings)  # the library's session (master, UTC), before Feast starts a default one
    job = store.get_historical_features(entity_df=entity_sql, features=store.get_feature_service(feature_service_name))
    for batch in job.iter_record_batches(ENTITY, chunk_rows or settings.chunk_rows):
        frame = batch.to_pandas().rename(columns={EVENT_TIMESTAMP: TIMESTAMP})
        if frame[TIMESTAMP].dt.tz is None:
            frame[TIMESTAMP] = frame[TIMESTAMP].dt.tz_localize("UTC")
        yield frame


def labels_as_of(month: Month, settings: Settings | None = None) -> datetime:
    """The as_of of the labels the month's drop brought (its latest successful ingestion, DESIGN
    "Data"): the previous month's when drops carry a label lag, else (and for months loaded
    without an `ingestion_runs` row) the month's own as_of."""
    import psycopg

    with psycopg.connect((settings or get_settings()).db_url) as conn:
        row = conn.execute(
            f"SELECT labels_as_of FROM {WAREHOUSE_SCHEMA}.ingestion_runs WHERE month = %s AND status = 'success' "
            "ORDER BY run_id DESC LIMIT 1",
            (month.name,),
        ).fetchone()
    if row is None or row[0] is None:
        return month.as_of_ts
    return datetime.combine(row[0], dt_time.min, tzinfo=UTC)


def iter_training_set(
    month: Month,
    feature_service_name: str = FEATURE_SERVICE,
    settings: Settings | None = None,
    chunk_rows: int | None = None,
) -> Iterator[pd.DataFrame]:
    """Point-in-time training set, a chunk at a time in user_id order: the labels the month's drop
    brought (`labels_as_of`), every feature of the FeatureService as of the labels' own as_of
    (nothing later), and `churn_label`. Columns: user_id, as_of (the labels'), features in the
    service's order, churn_label. Raises ValueError when the month has no labelled users."""
    settings = settings or get_settings()
    as_of = labels_as_of(month, settings)
    names = feature_names(feature_service_name, settings)
    empty = True
    entity_sql = _entity_query("labels", as_of, settings, [LABEL])
    for frame in iter_historical(entity_sql, feature_service_name, settings, chunk_rows):
        empty = False
        yield frame[[ENTITY, TIMESTAMP, *names, LABEL]]
    if empty:
        raise ValueError(f"{month}: no labelled users at {as_of.date()}")


def iter_feature_frames(
    month: Month,
    feature_service_name: str = FEATURE_SERVICE,
    settings: Settings | None = None,
    chunk_rows: int | None = None,
    sample_rows: int | None = None,
) -> Iterator[pd.DataFrame]:
    """The month's users (from `users`) with their point-in-time features at as_of, a chunk at a
    time in user_id order; no labels needed. With `sample_rows`, only the users of the month's
    seeded hash sample of about that size (`sample_condition`)."""
    settings = settings or get_settings()
    as_of = month.as_of_ts
    where = sample_condition(month_users(month, settings), sample_rows, engine=settings.engine) if sample_rows else ""
    names = feature_names(feature_service_name, settings)
    entity_sql = _entity_query("users", as_of, settings, where=where)
    for frame in iter_historical(entity_sql, feature_service_name, settings, chunk_rows):
        yield frame[[ENTITY, TIMESTAMP, *names]]


def feature_frame_on_spark(month: Month, feature_service_name: str, settings: Settings):
    """The month's users with their point-in-time features as a Spark DataFrame (spark engine):
    what `iter_feature_frames` streams to the task, left on the executors (user_id and the
    service's features; no order)."""
    from streamflow_mlops.data.spark import spark_session

    spark_session(settings)
    store = feature_store(settings)
    entity_sql = _entity_query("users", month.as_of_ts, settings)
    job = store.get_historical_features(entity_df=entity_sql, features=store.get_feature_service(feature_service_name))
    return job.to_spark_df().select(ENTITY, *feature_names(feature_service_name, settings))


def build_training_set(
    month: Month, feature_service_name: str = FEATURE_SERVICE, settings: Settings | None = None
) -> pd.DataFrame:
    """The whole point-in-time training set as one frame (`iter_training_set`; for months that fit)."""
    import pandas as pd

    return pd.concat(list(iter_training_set(month, feature_service_name, settings)), ignore_index=True)


def feature_frame(
    month: Month, feature_service_name: str = FEATURE_SERVICE, settings: Settings | None = None
) -> pd.DataFrame:
    """The month's users with their features as one frame (`iter_feature_frames`; for months that fit)."""
    import pandas as pd

    frames = list(iter_feature_frames(month, feature_service_name, settings))
    if not frames:
        names = feature_names(feature_service_name, settings)
        return pd.DataFrame(columns=[ENTITY, TIMESTAMP, *names])
    return pd.concat(frames, ignore_index=True)


def month_users(month: Month, settings: Settings | None = None) -> int:
    """How many users the month's `users` partition holds."""
    import psycopg

    settings = settings or get_settings()
    if settings.engine == "spark":
        from streamflow_mlops.data.spark import spark_session

        query = f"SELECT count(*) FROM {table_sql('users', settings)} WHERE {TIMESTAMP} = DATE '{month.as_of}'"
        return int(spark_session(settings).sql(query).first()[0])
    with psycopg.connect(settings.db_url) as conn:
        (count,) = conn.execute(
            f"SELECT count(*) FROM {WAREHOUSE_SCHEMA}.users WHERE {TIMESTAMP} = %s",
            (month.as_of,),
        ).fetchone()
    return int(count)


# A user's place in [0, 2**60) for samples: the first 15 hex digits of md5(user_id), computed by
# Postgres in the entity query (stable across servers and versions, unlike hashtext) and by anyone
# else from the id alone. Salt-free on purpose: the same users are sampled every month, so a
# month-over-month comparison is not blurred by a change of sample.
SAMPLE_BUCKETS = 2**60


def sample_condition(total_rows: int, sample_rows: int, column: str = ENTITY, engine: str = "postgres") -> str:
    """SQL keeping about `sample_rows` of `total_rows` users by their md5 bucket; '' keeps all (pure).
    The same users on either engine: the bucket is the same 15 hex digits, read as a number."""
    if total_rows <= sample_rows:
        return ""
    bound = SAMPLE_BUCKETS * sample_rows // total_rows
    if engine == "spark":
        return f"CAST(conv(substr(md5({column}), 1, 15), 16, 10) AS BIGINT) < {bound}"
    return f"('x' || substr(md5({column}), 1, 15))::bit(60)::bigint < {bound}"
