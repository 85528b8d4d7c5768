"""Feature views: one per snapshot table, fields derived from the schema's feature groups.

Declared once in the library (streamflow_mlops.features.definitions); bound here for `feast apply`.
"""

from streamflow_mlops.features.definitions import FEATURE_VIEWS

subscriptions_profile = FEATURE_VIEWS["subscriptions_profile"]
usage_agg_30d = FEATURE_VIEWS["usage_agg_30d"]
payments_agg_90d = FEATURE_VIEWS["payments_agg_90d"]
support_agg_90d = FEATURE_VIEWS["support_agg_90d"]
