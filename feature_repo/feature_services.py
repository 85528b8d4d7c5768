"""The FeatureService: THE feature list of the churn model, for training and serving alike.

Training fetches it by name and records that name on the MLflow model version; the service asks
Feast for exactly this service's features. Declared once in the library
(streamflow_mlops.features.definitions); bound here for `feast apply`.
"""

from streamflow_mlops.features.definitions import churn_model_v1

__all__ = ["churn_model_v1"]
