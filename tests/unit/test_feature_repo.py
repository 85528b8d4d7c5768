"""The Feast repo against the schema (one source of truth), its config, and the pure feature logic."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus, GetOnlineFeaturesResponse
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY, FEATURE_GROUPS, FEATURE_NAMES, TIMESTAMP
from streamflow_mlops.config.settings import FEATURE_SERVICE, Settings, get_settings
from streamflow_mlops.features.materialize import materialization_window, split_views
from streamflow_mlops.features.online import OnlineLookup, read_online_response
from streamflow_mlops.features.parity import parity_mismatches, values_equal
from streamflow_mlops.features.store import FEATURE_STORE_YAML, expand_vars, repo_config, repo_contents

FEAST_DTYPES = {"str": "String", "int": "Int64", "float": "Float64", "bool": "Bool"}


@pytest.fixture
def settings(monkeypatch, tmp_path) -> Settings:
    monkeypatch.setenv("STREAMFLOW_DB_URL", "postgresql://sf:s3cret@db.internal:6543/streamflow")
    monkeypatch.setenv("STREAMFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("STREAMFLOW_FEAST_ONLINE_STORE", raising=False)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def repo(settings):
    return repo_contents(repo_config(settings).project)


@pytest.mark.slow
def test_feast_cli_finds_the_same_objects_in_feature_repo(settings):
    """`feast apply` parses feature_repo/*.py itself; it must find exactly what the library applies.

    Run in a fresh interpreter: Feast's parser imports the repo's files by bare module name.
    """
    import json
    import subprocess
    import sys

    code = (
        "import json, sys; from pathlib import Path; from feast.repo_operations import parse_repo; "
        "r = parse_repo(Path(sys.argv[1])); "
        "print(json.dumps({k: sorted(o.name for o in getattr(r, k)) for k in "
        "('data_sources', 'entities', 'feature_views', 'feature_services')}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(settings.feature_repo)], capture_output=True, text=True, check=True
    ).stdout
    parsed = json.loads(out.strip().splitlines()[-1])
    library = repo_contents("streamflow")
    for kind, names in parsed.items():
        assert names == sorted(o.name for o in getattr(library, kind)), kind


def test_feature_service_is_exactly_the_schema_features(repo):
    (service,) = [s for s in repo.feature_services if s.name == FEATURE_SERVICE]
    listed = [f.name for p in service.feature_view_projections for f in p.features]
    assert listed == list(FEATURE_NAMES)


def test_one_feature_view_per_snapshot_table_typed_from_the_schema(repo):
    views = {v.name: v for v in repo.feature_views}
    assert set(views) == {g.name for g in FEATURE_GROUPS}
    for group in FEATURE_GROUPS:
        view = views[group.name]
        assert view.entities == ["user"] and view.online
        assert view.batch_source.get_table_query_string() == f"streamflow.{group.table}"
        assert view.batch_source.timestamp_field == TIMESTAMP
        assert {f.name: str(f.dtype) for f in view.features} == {c.name: FEAST_DTYPES[c.dtype] for c in group.columns}
    (user,) = [e for e in repo.entities if e.name == "user"]
    assert user.join_key == ENTITY


def test_feature_store_yaml_holds_no_literal_connection_values(settings):
    text = (settings.feature_repo / FEATURE_STORE_YAML).read_text()
    assert "s3cret" not in text and "postgresql://" not in text
    for key in ("host", "port", "database", "user", "password", "path", "online_store"):
        for value in re.findall(rf"^\s*{key}:\s*(.+)$", text, flags=re.M):
            assert value.strip().strip('"').startswith("${"), f"{key}: {value} is not from the environment"


def test_repo_config_takes_everything_from_settings(settings):
    config = repo_config(settings)
    assert config.entity_key_serialization_version == 3
    assert config.online_store.type == "sqlite" and config.online_store.path == str(
        settings.state_dir / "online_store.db"
    )
    assert config.offline_store.host == "db.internal"
    assert config.offline_store.port == 6543 and config.offline_store.password == "s3cret"
    assert config.registry.registry_type == "sql"
    assert config.registry.path == "postgresql+psycopg://sf:s3cret@db.internal:6543/streamflow"


def test_online_store_mapping_can_be_redis(settings, monkeypatch):
    monkeypatch.setenv("STREAMFLOW_FEAST_ONLINE_STORE", "{type: redis, connection_string: 'redis:6379'}")
    get_settings.cache_clear()
    config = repo_config(get_settings())
    assert config.online_store.type == "redis" and config.online_store.connection_string == "redis:6379"


def test_expand_vars_substitutes_known_and_keeps_unknown():
    env = {"A": "1", "B_C": "{type: sqlite, path: /x.db}"}
    assert expand_vars("a: $A\nb: ${B_C}\nc: ${NOPE}", env) == "a: 1\nb: {type: sqlite, path: /x.db}\nc: ${NOPE}"


def test_materialization_window_is_the_point_in_time_window():
    as_of = datetime(2024, 2, 29, tzinfo=UTC)
    assert materialization_window(as_of, timedelta(days=31)) == (datetime(2024, 1, 29, tzinfo=UTC), as_of)
    with pytest.raises(ValueError):
        materialization_window(as_of, timedelta(0))


def test_month_as_of_ts_is_midnight_utc_of_the_last_day():
    assert Month(1).as_of_ts == datetime(2024, 2, 29, tzinfo=UTC)


def test_split_views_balances_weight():
    weights = {"profile": 6, "usage": 5, "payments": 1, "support": 2}
    groups = split_views(weights, 2)
    assert sorted(sum(weights[v] for v in g) for g in groups) == [7, 7]
    assert sorted(v for g in groups for v in g) == sorted(weights)
    assert split_views(weights, 8) == [["profile"], ["usage"], ["support"], ["payments"]]
    assert split_views(weights, 1) == [["profile", "usage", "support", "payments"]]


def response(names, columns) -> GetOnlineFeaturesResponse:
    """A GetOnlineFeaturesResponse: one vector per feature, (value, status) per user."""
    proto = GetOnlineFeaturesResponse()
    proto.metadata.feature_names.val.extend(names)
    for cells in columns:
        proto.results.append(
            GetOnlineFeaturesResponse.FeatureVector(values=[v for v, _ in cells], statuses=[s for _, s in cells])
        )
    return proto


def test_online_response_reports_unknown_users_and_missing_values():
    present, absent = FieldStatus.PRESENT, FieldStatus.NOT_FOUND
    proto = response(
        [ENTITY, "skips_7d", "net_service"],
        [
            [(Value(string_val=u), present) for u in ("a", "b", "c")],
            [(Value(int64_val=3), present), (Value(), absent), (Value(int64_val=5), present)],
            [(Value(string_val="DSL"), present), (Value(), absent), (Value(), FieldStatus.NULL_VALUE)],
        ],
    )
    lookup = read_online_response(["a", "b", "c"], ["net_service", "skips_7d"], proto)
    assert lookup.feature_names == ("net_service", "skips_7d")
    assert lookup.unknown == ("b",)
    assert lookup.values == {"a": {"net_service": "DSL", "skips_7d": 3}, "c": {"net_service": None, "skips_7d": 5}}
    assert lookup.missing == {"c": ("net_service",)}
    assert lookup.complete == {"a": {"net_service": "DSL", "skips_7d": 3}}


def test_parity_mismatches_finds_each_disagreement():
    lookup = OnlineLookup(
        ("x", "y"), {"a": {"x": 1.0, "y": "DSL"}, "b": {"x": 2.0, "y": None}}, unknown=("c",), missing={"b": ("y",)}
    )
    offline = {"a": {"x": 1.0, "y": "DSL"}, "b": {"x": 2.0000001, "y": "No"}, "c": {"x": 0.0, "y": "No"}}
    problems = parity_mismatches(offline, lookup)
    assert problems == [
        "c: not in the online store",
        "b.x: offline 2.0000001 != online 2.0",
        "b.y: offline 'No' != online None",
    ]
    assert parity_mismatches({"a": {"x": 1.0, "y": "DSL"}}, lookup) == []


def test_values_equal_handles_nan_none_and_exact_types():
    assert values_equal(float("nan"), float("nan"))
    assert not values_equal(None, 0)
    assert values_equal(3, 3) and not values_equal(True, False)


# ---------------------------------------------------------------- bulk materialization, offline store


def test_repo_config_names_the_bulk_engine_and_the_hash_join_offline_store(settings):
    from streamflow_mlops.extensions.feast.bulk_materialization import BulkComputeEngine
    from streamflow_mlops.extensions.feast.offline_store import HashJoinPostgreSQLOfflineStore

    config = repo_config(settings)
    assert config.batch_engine_config["type"].endswith(BulkComputeEngine.__name__)
    assert config.offline_store.type.endswith(HashJoinPostgreSQLOfflineStore.__name__)
    assert type(config.batch_engine).__name__ == "BulkComputeEngineConfig"


def test_string_key_encoder_is_feasts_serialize_entity_key():
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey

    from streamflow_mlops.extensions.feast.keys import string_key_encoder

    ids = ["7590-VHVEG", "", "x" * 300, "ключ-ü", "0000-AAAAA"]
    expected = [
        serialize_entity_key(EntityKey(join_keys=[ENTITY], entity_values=[Value(string_val=u)]), 3) for u in ids
    ]
    assert string_key_encoder(ENTITY, 3).encode_many(ids) == expected


def test_bulk_write_leaves_the_rows_feasts_own_write_leaves(tmp_path):
    """Every feature type the bulk path takes, nulls, two timestamps and created timestamps: the
    bulk write and Feast's stock proto path leave identical sqlite rows, and Feast reads them."""
    import sqlite3

    import pyarrow as pa
    from feast import Entity, FeatureView, Field, ValueType
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
    from feast.infra.online_stores.sqlite import SqliteOnlineStore
    from feast.repo_config import RepoConfig
    from feast.types import Bool, Bytes, Float32, Float64, Int32, Int64, String
    from feast.utils import _convert_arrow_to_proto

    from streamflow_mlops.extensions.feast.bulk_materialization import can_write_in_bulk, write_arrow_batch

    user = Entity(name="user", join_keys=[ENTITY], value_type=ValueType.STRING)
    types = {"s": String, "i": Int64, "i32": Int32, "f": Float64, "f32": Float32, "b": Bool, "raw": Bytes}
    view = FeatureView(
        name="view",
        entities=[user],
        ttl=timedelta(days=31),
        schema=[Field(name=n, dtype=t) for n, t in types.items()],
        source=PostgreSQLSource(name="src", table="t", timestamp_field="ts", created_timestamp_column="created"),
    )
    t1, t2 = datetime(2024, 1, 31, tzinfo=UTC), datetime(2024, 2, 29, 12, 30, tzinfo=UTC)
    batch = pa.RecordBatch.from_pydict(
        {
            ENTITY: ["b-2", "a-1", "ключ", "c-3"],
            "s": ["DSL", None, "Fiber optic", "DSL"],
            "i": [3, None, -7, 3],
            "i32": pa.array([1, 2, None, 1], pa.int32()),
            "f": [1.25, float("nan"), None, 70.43],
            "f32": pa.array([0.5, None, 2.0, 0.5], pa.float32()),
            "b": [True, False, None, True],
            "raw": [b"\x00\x01", None, b"", b"\x00\x01"],
            "ts": [t1, t2, t1, t2],
            "created": [t2, t1, t1, t2],  # Feast's own write fails on a null created timestamp
        }
    )
    join_keys = {ENTITY: ValueType.STRING}

    def written(bulk: bool, rows: pa.RecordBatch) -> tuple[list, SqliteOnlineStore, RepoConfig]:
        path = tmp_path / f"{'bulk' if bulk else 'feast'}.db"
        config = RepoConfig(
            project="p",
            provider="local",
            registry=str(tmp_path / "registry.db"),
            online_store={"type": "sqlite", "path": str(path)},
            entity_key_serialization_version=3,
        )
        store = SqliteOnlineStore()
        store.update(config, [], [view], [], [user], partial=False)
        if bulk:
            assert can_write_in_bulk(store, config, view, join_keys)
            write_arrow_batch(store, config, view, rows, ENTITY)
        else:
            store.online_write_batch(config, view, _convert_arrow_to_proto(rows, view, join_keys), None)
        dump = sorted(sqlite3.connect(path).execute("SELECT *, typeof(event_ts), typeof(created_ts) FROM p_view"))
        return dump, store, config

    feast_rows, _, _ = written(False, batch)
    bulk_rows, store, config = written(True, batch)
    assert len(bulk_rows) == 4 * len(types) and bulk_rows == feast_rows
    keys = [EntityKeyProto(join_keys=[ENTITY], entity_values=[Value(string_val=u)]) for u in ("ключ", "zz")]
    (found_ts, found), (missing_ts, missing) = store.online_read(config, view, keys)
    assert found_ts == t1 and found["i"].int64_val == -7 and found["s"].string_val == "Fiber optic"
    assert found["b"] == Value() and missing is None and missing_ts is None

    # An upsert over existing rows (the next month) also matches Feast's.
    changed = batch.set_column(batch.schema.get_field_index("i"), "i", pa.array([9, 9, None, 1]))
    assert written(True, changed)[0] == written(False, changed)[0]


def test_bulk_write_is_only_for_feasts_sqlite_store(tmp_path):
    from feast import Entity, FeatureView, Field, ValueType
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
    from feast.infra.online_stores.sqlite import SqliteOnlineStore
    from feast.repo_config import RepoConfig
    from feast.types import Array, Int64

    from streamflow_mlops.extensions.feast.bulk_materialization import can_write_in_bulk

    user = Entity(name="user", join_keys=[ENTITY], value_type=ValueType.STRING)
    source = PostgreSQLSource(name="src", table="t", timestamp_field="ts")
    scalar = FeatureView(name="v", entities=[user], schema=[Field(name="i", dtype=Int64)], source=source)
    listed = FeatureView(name="w", entities=[user], schema=[Field(name="l", dtype=Array(Int64))], source=source)
    config = RepoConfig(
        project="p",
        provider="local",
        registry=str(tmp_path / "registry.db"),
        online_store={"type": "sqlite", "path": str(tmp_path / "o.db")},
        entity_key_serialization_version=3,
    )
    keys = {ENTITY: ValueType.STRING}
    assert can_write_in_bulk(SqliteOnlineStore(), config, scalar, keys)
    assert not can_write_in_bulk(object(), config, scalar, keys)  # Redis and friends: Feast's own step
    assert not can_write_in_bulk(SqliteOnlineStore(), config, listed, keys)
    assert not can_write_in_bulk(SqliteOnlineStore(), config, scalar, {ENTITY: ValueType.INT64})


def test_the_online_store_never_moves_back_in_time_unless_forced():
    from datetime import UTC, datetime

    from streamflow_mlops.features.materialize import older_than_published

    jan, feb = datetime(2024, 1, 31, tzinfo=UTC), datetime(2024, 2, 29, tzinfo=UTC)
    assert older_than_published(feb, jan, force=False) is None
    assert older_than_published(feb, feb, force=False) is None
    assert older_than_published(feb, None, force=False) is None
    assert "back in time" in older_than_published(jan, feb, force=False)
    assert older_than_published(jan, feb, force=True) is None
