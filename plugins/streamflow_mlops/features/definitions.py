"""The Feast objects of the churn model, derived from the schema's feature groups.

One entity (the subscriber), one Postgres source and one feature view per snapshot table, and the
FeatureService that is THE feature list of the model for training and serving alike (Feast
ADR-0001: hand-listed features drift apart). `feature_repo/*.py` binds these objects at module
level for the `feast` CLI; the library applies them itself (store.apply_repo), so neither imports
the other's files by path.
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, ValueType
from feast.data_source import DataSource
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.types import Bool, Float64, Int64, String

from streamflow_mlops.config.schema import ENTITY, FEATURE_GROUPS, TIMESTAMP, FeatureGroup
from streamflow_mlops.config.settings import FEATURE_SERVICE, WAREHOUSE_SCHEMA

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


SOURCES = {name: snapshot_source(group) for name, group in GROUPS.items()}
FEATURE_VIEWS = {name: snapshot_view(group, SOURCES[name]) for name, group in GROUPS.items()}

churn_model_v1 = FeatureService(
    name=FEATURE_SERVICE,
    features=list(FEATURE_VIEWS.values()),
    description="Every profile, usage, payment and support feature the churn model reads.",
)
