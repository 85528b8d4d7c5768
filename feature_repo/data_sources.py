"""Postgres sources: the warehouse's point-in-time snapshot tables, one per feature group.

Declared once in the library (streamflow_mlops.features.definitions); bound here for `feast apply`,
which only picks up objects bound at module level. A group added to the schema and not bound here
leaves this file short of a source, which tests/unit/test_feature_repo.py catches.
"""

from streamflow_mlops.features.definitions import SOURCES

subscriptions_profile_source = SOURCES["subscriptions_profile"]
usage_agg_30d_source = SOURCES["usage_agg_30d"]
payments_agg_90d_source = SOURCES["payments_agg_90d"]
support_agg_90d_source = SOURCES["support_agg_90d"]
