"""The Feast objects of the churn model, derived from the schema's feature groups.

One entity (the subscriber), one source and one feature view per snapshot table, and the
FeatureService that is THE feature list of the model for training and serving alike (Feast
ADR-0001: hand-listed features drift apart). `feature_repo/*.py` binds these objects at module
level for the `feast` CLI; the library applies them itself (store.apply_repo), so neither imports
the other's files by path.

The sources follow the engine (STREAMFLOW_ENGINE): the warehouse's snapshot tables (Postgres), or
the lake's (Parquet, read by Feast's Spark offline store); the views and the service are the same.
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, ValueType
from feast.data_source import DataSource
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
from feast.types import Bool, Float64, Int64, String

from streamflow_mlops.config.schema import ENTITY, FEATURE_GROUPS, TIMESTAMP, FeatureGroup
from streamflow_mlops.config.settings import FEATURE_SERVICE, WAREHOUSE_SCHEMA, Settings, get_settings
from streamflow_mlops.data.lake import table_url

FEAST_TYPES = {"str": String, "int": Int64, "float": Float64, "bool": Bool}

# A snapshot answers for one month: the next as_of is 28 to 31 days later, so a 31-day TTL lets a
# lookup anywhere inside the month see that month's snapshot, and never one older than a month.
SNAPSHOT_TTL = timedelta(days=31)

GROUPS = {group.name: group for group in FEATURE_GROUPS}

# Every snapshot table and every request is keyed by the subscriber id, so one entity is enough.
user = Entity(
    name="user",
    join_keys=[ENTITY],
    value_type=ValueType.STRING,
    description="A StreamFlow subscriber (ids like 7590-VHVEG).",
)


def snapshot_source(group: FeatureGroup) -> PostgreSQLSource:
    """The snapshot table of a feature group as a Feast source.

    The snapshot tables are keyed by (user_id, as_of); `as_of` (midnight UTC of the month's last
    day) is the event timestamp Feast joins on, so a training row at `as_of` sees that month's
    values and nothing later.
    """
    return PostgreSQLSource(
        name=f"{group.table}_source",
        table=f"{WAREHOUSE_SCHEMA}.{group.table}",
        timestamp_field=TIMESTAMP,
        description=f"{WAREHOUSE_SCHEMA}.{group.table}, written by the monthly ingest (one row per user per as_of).",
    )


def lake_table_sql(lake_url: str, table: str) -> str:
    """Spark SQL naming a lake table by its path (no catalog needed), e.g. parquet.`/lake/users` (pure)."""
    return f"parquet.`{table_url(lake_url, table)}`"


def lake_snapshot_source(group: FeatureGroup, lake_url: str) -> SparkSource:
    """The lake's snapshot table of a feature group as a Feast Spark source: its month folders'
    `as_of` dates become the midnight-UTC timestamps Feast joins on, as in the warehouse. Named
    apart from the warehouse's sources: Feast's SQL registry cannot replace a source by one of
    another type under the same name (it reads the old one with the new type's parser), so
    switching engines retires the one and registers the other."""
    columns = ", ".join([ENTITY, *(c.name for c in group.columns)])
    return SparkSource(
        name=f"{group.table}_lake_source",
        query=(
            f"SELECT {columns}, CAST({TIMESTAMP} AS TIMESTAMP) AS {TIMESTAMP} "
            f"FROM {lake_table_sql(lake_url, group.table)}"
        ),
        timestamp_field=TIMESTAMP,
        description=f"{table_url(lake_url, group.table)}, written by the monthly ingest (one row per user per as_of).",
    )


def sources(settings: Settings | None = None) -> dict[str, DataSource]:
    """Each feature group's source on the configured engine."""
    settings = settings or get_settings()
    if settings.engine == "spark":
        return {name: lake_snapshot_source(group, settings.lake_url) for name, group in GROUPS.items()}
    return {name: snapshot_source(group) for name, group in GROUPS.items()}


def snapshot_view(group: FeatureGroup, source: DataSource) -> FeatureView:
    """A feature view over a group's snapshot table, one field per schema column."""
    return FeatureView(
        name=group.name,
        entities=[user],
        ttl=SNAPSHOT_TTL,
        schema=[Field(name=column.name, dtype=FEAST_TYPES[column.dtype]) for column in group.columns],
        online=True,
        source=source,
        description=f"Monthly snapshot of {', '.join(t.name for t in group.sources)} per user.",
        tags={"table": group.table},
    )


def feature_views(source_by_group: dict[str, DataSource]) -> dict[str, FeatureView]:
    return {name: snapshot_view(group, source_by_group[name]) for name, group in GROUPS.items()}


def churn_feature_service(views: dict[str, FeatureView]) -> FeatureService:
    return FeatureService(
        name=FEATURE_SERVICE,
        features=list(views.values()),
        description="Every profile, usage, payment and support feature the churn model reads.",
    )


# Bound for the `feast` CLI (feature_repo/*.py), on the engine of the environment it runs in.
SOURCES = sources()
FEATURE_VIEWS = feature_views(SOURCES)
churn_model_v1 = churn_feature_service(FEATURE_VIEWS)
