"""Postgres sources: the warehouse's point-in-time snapshot tables, one per feature group.

The snapshot tables are keyed by (user_id, as_of); `as_of` (midnight UTC of the month's last day)
is the event timestamp Feast joins on, so a training row at `as_of` sees that month's values and
nothing later.
"""

from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource

from streamflow_mlops.schema import FEATURE_GROUPS, TIMESTAMP, FeatureGroup
from streamflow_mlops.settings import WAREHOUSE_SCHEMA


def snapshot_source(group: FeatureGroup) -> PostgreSQLSource:
    """The snapshot table of a feature group as a Feast source."""
    return PostgreSQLSource(
        name=f"{group.table}_source",
        table=f"{WAREHOUSE_SCHEMA}.{group.table}",
        timestamp_field=TIMESTAMP,
        description=f"{WAREHOUSE_SCHEMA}.{group.table}, written by the monthly ingest (one row per user per as_of).",
    )


GROUPS = {group.name: group for group in FEATURE_GROUPS}

# One module-level name per group: `feast apply` only picks up objects bound at module level. A group
# added to the schema and not here leaves the FeatureService short, which test_feature_repo catches.
subscriptions_profile_source = snapshot_source(GROUPS["subscriptions_profile"])
usage_agg_30d_source = snapshot_source(GROUPS["usage_agg_30d"])
payments_agg_90d_source = snapshot_source(GROUPS["payments_agg_90d"])
support_agg_90d_source = snapshot_source(GROUPS["support_agg_90d"])
