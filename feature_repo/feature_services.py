"""The FeatureService: THE feature list of the churn model, for training and serving alike.

Training fetches it by name and records that name on the MLflow model version; the service asks
Feast for exactly this service's features (Feast ADR-0001: hand-listed features drift apart).
"""

from feast import FeatureService
from features import payments_agg_90d, subscriptions_profile, support_agg_90d, usage_agg_30d

from streamflow_mlops.settings import FEATURE_SERVICE

churn_model_v1 = FeatureService(
    name=FEATURE_SERVICE,
    features=[subscriptions_profile, usage_agg_30d, payments_agg_90d, support_agg_90d],
    description="Every profile, usage, payment and support feature the churn model reads.",
)
