"""The service's feature reads: Feast's SDK, or a direct reader of Feast's sqlite online store (same bytes,
no protobuf per value; its layout in extensions/feast/sqlite_store.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from streamflow_mlops.config.schema import ENTITY
from streamflow_mlops.config.settings import Settings
from streamflow_mlops.extensions.feast.keys import string_key_encoder
from streamflow_mlops.extensions.feast.sqlite_store import select_features
from streamflow_mlops.serving.errors import MissingFeatures, Unavailable, UnknownUser


@dataclass(frozen=True)
class FeatureRef:
    """One feature of a FeatureService: the feature view it lives in and its name."""

    view: str
    name: str


class OnlineFeatureReader(Protocol):
    """Reads the online features of a FeatureService; a missing value (or a whole unknown user) is None."""

    def feature_refs(self, feature_service: str) -> tuple[FeatureRef, ...]: ...

    def read(self, user_ids: Sequence[str], feature_service: str) -> FeatureRows: ...

    def forget_refs(self) -> None: ...


class FeastSdkReader:
    """The reference path: `features.online_features` (Feast's own SDK read), for any online store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def feature_refs(self, feature_service: str) -> tuple[FeatureRef, ...]:
        from streamflow_mlops.features.store import feature_service as registered_service

        try:
            service = registered_service(feature_service, self.settings)
        except Exception as exc:  # registry down or service unknown: either way it can't be served
            raise Unavailable("feature_store", f"feature service {feature_service}: {exc}") from exc
        return tuple(
            FeatureRef(projection.name_to_use(), feature.name)
            for projection in service.feature_view_projections
            for feature in projection.features
        )

    def read(self, user_ids: Sequence[str], feature_service: str) -> FeatureRows:
        from streamflow_mlops.features.online import online_features

        try:
            lookup = online_features(user_ids, feature_service, self.settings)
        except Exception as exc:
            raise Unavailable("feature_store", str(exc)) from exc
        nothing = dict.fromkeys(lookup.feature_names)
        return {user_id: dict(lookup.values.get(user_id, nothing)) for user_id in user_ids}

    def forget_refs(self) -> None:
        """Nothing cached here: feature_refs asks the registry every time."""


class SqliteOnlineReader:
    """Fast path for Feast's sqlite online store: one query per batch over the service's view tables.

    It decodes rows with Feast's own key and value codecs, resolves the FeatureService through the
    Feast registry, and is checked against `FeastSdkReader` by a parity test. A service's feature
    list is cached for `refs_ttl_s` (Feast's own registry cache period), and dropped at once when
    the champion changes: a new champion on a redefined FeatureService reads its new features.
    """

    def __init__(self, path: str | Path, project: str, resolver: FeastSdkReader, refs_ttl_s: float = 60.0) -> None:
        self.path = str(path)
        self.project = project
        self.resolver = resolver
        self.refs_ttl_s = refs_ttl_s
        self._refs: dict[str, tuple[float, tuple[FeatureRef, ...]]] = {}
        self._local = threading.local()

    def feature_refs(self, feature_service: str) -> tuple[FeatureRef, ...]:
        loaded_at, refs = self._refs.get(feature_service, (float("-inf"), ()))
        if time.monotonic() - loaded_at > self.refs_ttl_s:
            refs = self.resolver.feature_refs(feature_service)
            self._refs[feature_service] = (time.monotonic(), refs)
        return refs

    def forget_refs(self) -> None:
        self._refs = {}

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # Read-only: a missing file is an error here, never a new empty store.
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0, check_same_thread=False)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def read(self, user_ids: Sequence[str], feature_service: str) -> FeatureRows:
        from feast.protos.feast.types.Value_pb2 import Value as ValueProto
        from feast.type_map import feast_value_type_to_python_type

        refs = self.feature_refs(feature_service)
        keys = dict(zip(string_key_encoder(ENTITY, 3).encode_many(user_ids), user_ids, strict=True))
        by_view: dict[str, list[str]] = {}
        for ref in refs:
            by_view.setdefault(ref.view, []).append(ref.name)
        selects, params = [], []
        for view, names in by_view.items():
            selects.append(select_features(self.project, view, len(keys), len(names)))
            params.extend(keys)
            params.extend(names)
        try:
            rows = self._connection().execute(" UNION ALL ".join(selects), params).fetchall()
        except sqlite3.Error as exc:
            self._drop_connection()
            raise Unavailable("feature_store", f"online store {self.path}: {exc}") from exc
        answer: FeatureRows = {user_id: dict.fromkeys(ref.name for ref in refs) for user_id in user_ids}
        for key, name, blob in rows:
            answer[keys[key]][name] = feast_value_type_to_python_type(ValueProto.FromString(blob))
        return answer


def entity_key_bytes(user_id: str) -> bytes:
    """The sqlite online store's key for a user, as Feast serializes it (key serialization v3)."""
    return string_key_encoder(ENTITY, 3).encode_many([user_id])[0]


def build_reader(settings: Settings) -> OnlineFeatureReader:
    """The fastest reader for the configured online store, with the Feast SDK as the fallback."""
    from streamflow_mlops.features.store import feature_store, sqlite_path

    sdk = FeastSdkReader(settings)
    store = feature_store(settings)
    path = sqlite_path(store)
    # The direct reader knows Feast's unversioned table names and key serialization v3 only.
    versioned = getattr(store.config.registry, "enable_online_feature_view_versioning", False)
    if path is not None and store.config.entity_key_serialization_version == 3 and not versioned:
        return SqliteOnlineReader(path, store.project, sdk)
    return sdk


def split_lookup(user_id: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The user's features, or the error the lookup means: nothing at all is an unknown user."""
    missing = [name for name, value in values.items() if value is None]
    if len(missing) == len(values):
        raise UnknownUser(user_id)
    if missing:
        raise MissingFeatures(user_id, missing)
    return dict(values)


FeatureRows = dict[str, dict[str, Any]]
