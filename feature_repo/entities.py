"""The one entity: a StreamFlow subscriber, keyed by its Telco-style `user_id`."""

from feast import Entity, ValueType

from streamflow_mlops.schema import ENTITY

# Every snapshot table and every request is keyed by the subscriber id, so one entity is enough.
user = Entity(
    name="user",
    join_keys=[ENTITY],
    value_type=ValueType.STRING,
    description="A StreamFlow subscriber (ids like 7590-VHVEG).",
)
