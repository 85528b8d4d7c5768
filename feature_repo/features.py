"""Feature views: one per snapshot table, fields derived from the schema's feature groups."""

from datetime import timedelta

from data_sources import (
    GROUPS,
    payments_agg_90d_source,
    subscriptions_profile_source,
    support_agg_90d_source,
    usage_agg_30d_source,
)
from entities import user
from feast import FeatureView, Field
from feast.data_source import DataSource
from feast.types import Bool, Float64, Int64, String

from streamflow_mlops.schema import FeatureGroup

FEAST_TYPES = {"str": String, "int": Int64, "float": Float64, "bool": Bool}

# A snapshot answers for one month: the next as_of is 28 to 31 days later, so a 31-day TTL lets a
# lookup anywhere inside the month see that month's snapshot, and never one older than a month.
SNAPSHOT_TTL = timedelta(days=31)


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


subscriptions_profile = snapshot_view(GROUPS["subscriptions_profile"], subscriptions_profile_source)
usage_agg_30d = snapshot_view(GROUPS["usage_agg_30d"], usage_agg_30d_source)
payments_agg_90d = snapshot_view(GROUPS["payments_agg_90d"], payments_agg_90d_source)
support_agg_90d = snapshot_view(GROUPS["support_agg_90d"], support_agg_90d_source)
