"""Feast's sqlite online store as the service reads it directly: one table per feature view named
`<project>_<view>` (no view versioning), a row per (entity key, feature) holding the serialized
`Value` proto. tests/unit/test_extensions.py checks it against a table Feast itself creates."""

from __future__ import annotations

ENTITY_KEY, FEATURE_NAME, VALUE = "entity_key", "feature_name", "value"


def table_name(project: str, view: str) -> str:
    """A feature view's table (Feast's `_table_id` with online view versioning off)."""
    return f"{project}_{view}"


def select_features(project: str, view: str, keys: int, features: int) -> str:
    """One view's rows for `keys` entity keys and `features` feature names (qmark parameters)."""
    table = table_name(project, view).replace('"', '""')
    return (
        f'SELECT {ENTITY_KEY}, {FEATURE_NAME}, {VALUE} FROM "{table}" '
        f"WHERE {ENTITY_KEY} IN ({','.join('?' * keys)}) AND {FEATURE_NAME} IN ({','.join('?' * features)})"
    )


def feast_connection(store):
    """The sqlite connection Feast itself writes through (its settings, such as the busy timeout,
    are per connection), or None for another online store."""
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    online = store._get_provider().online_store
    return online._get_conn(store.config) if isinstance(online, SqliteOnlineStore) else None
