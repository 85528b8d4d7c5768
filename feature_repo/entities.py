"""The one entity: a StreamFlow subscriber, keyed by its Telco-style `user_id`.

Declared once in the library (streamflow_mlops.features.definitions); bound here for `feast apply`.
"""

from streamflow_mlops.features.definitions import user

__all__ = ["user"]
