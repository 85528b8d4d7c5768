"""Materialization into Feast's sqlite online store in bulk: the same tables, the same bytes.

Feast's local engine turns every materialized row into protobuf objects (an `EntityKey`, a dict of
`Value`s) and its `SqliteOnlineStore` serializes them again and runs one `INSERT ... ON CONFLICT`
per feature value (docs/decisions.md has what that costs).

`BulkComputeEngine` is Feast's local compute engine (same source read, TTL filter and latest-row
dedup; named by class path as `batch_engine` in `feature_store.yaml`) whose last step, when the
online store is Feast's `SqliteOnlineStore`, writes each Arrow batch with one `executemany` in one
transaction, rows in primary-key order. With any other online store (Redis in compose) the last
step is Feast's own.

Exact by construction rather than by re-implementation: each distinct value of a column is
converted by Feast's own `python_values_to_proto_values` and serialized by protobuf, each distinct
timestamp goes through Feast's `to_naive_utc` and the sqlite adapter Feast registers, and entity
keys come from Feast's `serialize_entity_key` (a fixed prefix, checked against it). Only mapping
those results back onto the rows is vectorized, so Feast's `online_read` / `get_online_features`
read the rows exactly as if Feast had written them (tests compare the files row for row).

Streamed, so that memory is bounded by a chunk whatever the month's size: Feast's
source read fetches a view's whole window as Python tuples, then an Arrow table, and a task's peak
grew with the month. Into the sqlite store
`BulkExecutionPlan` instead reads the same rows (the query of Feast's own
`pull_latest_from_table_or_query` for the window: same TTL window, same latest row per key)
through a server-side cursor in join-key order, `STREAMFLOW_CHUNK_ROWS` rows at a time, and runs
Feast's own filter and dedup nodes and the bulk output on each chunk in turn. That is exact
because the latest-row query leaves one row per key (no key spans two chunks) and those nodes work
row by row or key by key; a plan with any other step (a transformation, an aggregation, a join),
an offline write, Feast's all-rows read or another online store runs Feast's way, whole.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from feast.feature_view import FeatureView
from feast.infra.common.materialization_job import MaterializationJobStatus
from feast.infra.compute_engines.dag.context import ExecutionContext
from feast.infra.compute_engines.dag.plan import ExecutionPlan
from feast.infra.compute_engines.local.arrow_table_value import ArrowTableValue
from feast.infra.compute_engines.local.compute import LocalComputeEngine, LocalComputeEngineConfig
from feast.infra.compute_engines.local.feature_builder import LocalFeatureBuilder
from feast.infra.compute_engines.local.job import LocalMaterializationJob
from feast.infra.compute_engines.local.nodes import (
    LocalDedupNode,
    LocalFilterNode,
    LocalOutputNode,
    LocalSourceReadNode,
)
from feast.infra.compute_engines.utils import create_offline_store_retrieval_job
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import PostgreSQLOfflineStore
from feast.infra.online_stores.helpers import extract_text_and_num
from feast.infra.online_stores.sqlite import SqliteOnlineStore, _quote_id, _table_id
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from feast.type_map import python_values_to_proto_values
from feast.utils import _coerce_datetime, to_naive_utc
from feast.value_type import ValueType

from streamflow_mlops.config.settings import get_settings
from streamflow_mlops.extensions.feast.keys import string_key_encoder
from streamflow_mlops.extensions.feast.offline_store import HashJoinRetrievalJob

log = logging.getLogger(__name__)

# Page cache of the writing connection (KiB, sqlite's negative-size convention): the B-trees of a
# multi-GB table do not fit sqlite's 2 MB default, and every miss is a re-read.
WRITE_CACHE_KIB = 262_144
# WAL pages between automatic checkpoints of the writing connection: each checkpoint fsyncs, and
# sqlite's default (1,000) doubled a large materialization's time (docs/decisions.md).
WAL_CHECKPOINT_PAGES = 100_000
# Feature types Feast converts one proto per value; lists, maps and timestamps keep Feast's path.
BULK_FEATURE_TYPES = frozenset(
    {
        ValueType.STRING,
        ValueType.BYTES,
        ValueType.INT32,
        ValueType.INT64,
        ValueType.FLOAT,
        ValueType.DOUBLE,
        ValueType.BOOL,
    }
)
_PRIMARY_KEY = ("entity_key", "feature_name")


def object_array(items: Sequence[Any]) -> np.ndarray:
    """A 1-d object array of the items as they are (numpy would split tuples or equal-length bytes)."""
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def encode_feature_column(
    values: np.ndarray, value_type: ValueType, with_num: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per row: the serialized `Value`, its `value_text` and (optionally) `value_num`, as Feast writes them.

    Each distinct value goes through Feast's converter once; nulls (code -1, hence the empty
    `Value` appended last) become the empty `Value`, as in Feast's own conversion.
    """
    codes, distinct = pd.factorize(values, use_na_sentinel=True)
    protos = [*python_values_to_proto_values(distinct, value_type), ValueProto()]
    texts, nums = zip(*(extract_text_and_num(p, with_num) for p in protos), strict=True)
    return (
        object_array([p.SerializeToString() for p in protos])[codes],
        object_array(texts)[codes],
        object_array(nums)[codes] if with_num else None,
    )


def sqlite_timestamps(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Per row: what sqlite stores for Feast's event/created timestamp (`to_naive_utc`, then the
    adapter Feast registers), computed once per distinct timestamp; null stays NULL."""
    stamps = pd.to_datetime(column.to_numpy(zero_copy_only=False))
    codes, distinct = pd.factorize(stamps, use_na_sentinel=True)
    adapted = [sqlite3.adapt(to_naive_utc(_coerce_datetime(ts))) for ts in distinct]
    return object_array([*adapted, None])[codes]


def upsert_sql(table_name: str, columns: Sequence[str]) -> str:
    """Feast's sqlite upsert: insert, or replace the non-key columns of (entity_key, feature_name)."""
    update = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in _PRIMARY_KEY)
    return (
        f"INSERT INTO {_quote_id(table_name)} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
        f"ON CONFLICT(entity_key, feature_name) DO UPDATE SET {update}"
    )


def can_write_in_bulk(store: Any, config: RepoConfig, view: FeatureView, join_keys: dict[str, ValueType]) -> bool:
    """True for Feast's sqlite store without vector search, one string join key and scalar features."""
    return (
        isinstance(store, SqliteOnlineStore)
        and not config.online_store.vector_enabled
        and list(join_keys.values()) == [ValueType.STRING]
        and view.batch_source is not None
        and all(f.dtype.to_value_type() in BULK_FEATURE_TYPES for f in view.features)
    )


def write_arrow_batch(
    store: SqliteOnlineStore,
    config: RepoConfig,
    view: FeatureView,
    batch: pa.RecordBatch | pa.Table,
    join_key: str,
) -> int:
    """Write an Arrow batch of a feature view (join key, features, timestamps) into Feast's sqlite
    table of the view, in one transaction, each entity's features together; returns the entities."""
    if batch.num_rows == 0:
        return 0
    conn = store._get_conn(config)
    table_name = _table_id(config.project, view, config.registry.enable_online_feature_view_versioning)
    # Feast fills value_num only with this option and the column present; so does this.
    with_num = bool(getattr(config.online_store, "enable_openai_compatible_store", False)) and (
        store._check_table_has_value_num(conn, table_name)
    )
    columns = ["entity_key", "feature_name", "value", "value_text", *(["value_num"] if with_num else [])]
    sql = upsert_sql(table_name, [*columns, "event_ts", "created_ts"])

    encoded = [
        encode_feature_column(batch.column(f.name).to_numpy(zero_copy_only=False), f.dtype.to_value_type(), with_num)
        for f in view.features
    ]
    width = len(encoded)
    keys = object_array(
        string_key_encoder(join_key, config.entity_key_serialization_version).encode_many(
            batch.column(join_key).to_pylist()
        )
    )
    source = view.batch_source
    event = sqlite_timestamps(batch.column(source.timestamp_field))
    created = (
        sqlite_timestamps(batch.column(source.created_timestamp_column))
        if source.created_timestamp_column
        else object_array([None] * batch.num_rows)
    )

    def entity_major(per_feature: list[np.ndarray]) -> list:
        return np.stack(per_feature, axis=1).ravel().tolist()

    rows = [
        np.repeat(keys, width).tolist(),
        [f.name for f in view.features] * batch.num_rows,
        entity_major([e[0] for e in encoded]),
        entity_major([e[1] for e in encoded]),
        *([entity_major([e[2] for e in encoded])] if with_num else []),
        np.repeat(event, width).tolist(),
        np.repeat(created, width).tolist(),
    ]
    conn.execute(f"PRAGMA cache_size = -{WRITE_CACHE_KIB}")
    # In WAL mode (features.apply_repo sets it) NORMAL drops the fsync per commit and still never
    # corrupts the file; an OS crash can lose the last batches, which re-materializing restores.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
    with conn:
        conn.executemany(sql, zip(*rows, strict=True))
    return batch.num_rows


class BulkOutputNode(LocalOutputNode):
    """Feast's output step; into Feast's sqlite store it writes Arrow batches in bulk."""

    def join_keys(self) -> dict[str, ValueType]:
        return {e.name: e.dtype.to_value_type() for e in self.feature_view.entity_columns}

    def writes_in_bulk(self, context: ExecutionContext) -> bool:
        """True when this step writes online rows itself rather than through Feast's store."""
        view = self.feature_view
        return view.online and can_write_in_bulk(context.online_store, context.repo_config, view, self.join_keys())

    def execute(self, context: ExecutionContext) -> ArrowTableValue:
        view, config, store = self.feature_view, context.repo_config, context.online_store
        if not self.writes_in_bulk(context):
            return super().execute(context)
        table = self.get_single_table(context).data
        output = ArrowTableValue(data=table)
        context.node_outputs[self.name] = output
        (join_key,) = self.join_keys()
        # In key order every batch appends at the right edge of the primary-key B-trees instead of
        # touching pages all over a multi-GB file (3 GB at 1M users).
        ordered = table.sort_by(join_key)
        size = config.materialization_config.online_write_batch_size
        for batch in [ordered] if size is None else ordered.to_batches(max_chunksize=size):
            write_arrow_batch(store, config, view, batch, join_key)
        if view.offline and table.num_rows:
            context.offline_store.offline_write_batch(
                config=config, feature_view=view, table=table, progress=lambda _: None
            )
        return output


class BulkSourceReadNode(LocalSourceReadNode):
    """Feast's source read, which can also hand over the same rows a chunk at a time in key order."""

    def can_stream(self, context: ExecutionContext) -> bool:
        """Feast's latest-row read (one row per key) of a one-key view, from the Postgres offline store."""
        return (
            context.repo_config.materialization_config.pull_latest_features
            and isinstance(context.offline_store, PostgreSQLOfflineStore)
            and len(self.column_info.join_keys) == 1
        )

    def execute_in_chunks(self, context: ExecutionContext, chunk_rows: int) -> Iterator[ArrowTableValue]:
        """What `execute` returns, as consecutive tables of at most `chunk_rows` rows in join-key order."""
        job = create_offline_store_retrieval_job(
            data_source=self.source,
            column_info=self.column_info,
            context=context,
            start_time=self.start_time,
            end_time=self.end_time,
        )
        (join_key,) = self.column_info.join_keys
        mapping = self.column_info.field_mapping or {}
        # Key order is the one the bulk output sorts each batch in ("C": bytes, as Arrow's sort).
        for batch in HashJoinRetrievalJob.of(job).iter_record_batches(join_key, chunk_rows):
            table = pa.Table.from_batches([batch])
            yield ArrowTableValue(table.rename_columns([mapping.get(c, c) for c in table.column_names]))


# The steps between the source read and the output that give the same rows chunk by chunk as over
# the whole window once each key's rows sit in one chunk: Feast's filter (row by row: the view's
# filter; its TTL bound applies only to an entity dataframe) and dedup (latest row per key).
CHUNKABLE_STEPS = (LocalFilterNode, LocalDedupNode)


class BulkExecutionPlan(ExecutionPlan):
    """Feast's plan, run once per chunk of the source's rows when its output writes in bulk."""

    def streams(self, context: ExecutionContext) -> bool:
        """True for read, filter/dedup, bulk output into sqlite, and no offline write."""
        source, *steps, output = self.nodes
        return (
            isinstance(source, BulkSourceReadNode)
            and isinstance(output, BulkOutputNode)
            and all(type(step) in CHUNKABLE_STEPS for step in steps)
            and source.can_stream(context)
            and output.writes_in_bulk(context)
            and not output.feature_view.offline
        )

    def execute(self, context: ExecutionContext) -> ArrowTableValue:
        if not self.streams(context):
            return super().execute(context)
        source, *steps = self.nodes
        chunk_rows = get_settings().chunk_rows
        result, rows, chunks = ArrowTableValue(pa.table({})), 0, 0
        for chunk in source.execute_in_chunks(context, chunk_rows):
            # Feast's nodes take their input from `context.node_outputs` under the input node's
            # name, as `ExecutionPlan.execute` leaves it; seeded with one chunk (and nothing of the
            # previous one, so memory holds one chunk), the later steps run on that chunk alone.
            context.node_outputs = {source.name: chunk}
            for node in steps:
                context.node_outputs[node.name] = result = node.execute(context)
            rows, chunks = rows + chunk.data.num_rows, chunks + 1
        view = self.nodes[-1].feature_view.name
        log.info("%s: %d rows streamed in %d chunks of up to %d", view, rows, chunks, chunk_rows)
        return result


class BulkFeatureBuilder(LocalFeatureBuilder):
    """Feast's local plan (read, filter, dedup), ending in `BulkOutputNode`, run as a `BulkExecutionPlan`."""

    def build_source_node(self, view):
        node = BulkSourceReadNode(
            "source", view.source, self.get_column_info(view), self.task.start_time, self.task.end_time
        )
        self.nodes.append(node)
        return node

    def build_output_nodes(self, view, input_node):
        node = BulkOutputNode("output", self.dag_root.view, inputs=[input_node])
        self.nodes.append(node)
        return node

    def build(self) -> BulkExecutionPlan:
        return BulkExecutionPlan(super().build().nodes)


class BulkComputeEngineConfig(LocalComputeEngineConfig):
    """Feast's local engine config (same `backend`), selected by this engine's class path."""

    type: Literal["streamflow_mlops.extensions.feast.bulk_materialization.BulkComputeEngine"] = (  # type: ignore[assignment]
        "streamflow_mlops.extensions.feast.bulk_materialization.BulkComputeEngine"
    )


class BulkComputeEngine(LocalComputeEngine):
    """Feast's local compute engine, materializing through `BulkFeatureBuilder`."""

    def _materialize_one(self, registry, task, **kwargs) -> LocalMaterializationJob:
        job_id = f"{task.feature_view.name}-{task.start_time}-{task.end_time}"
        context = self.get_execution_context(registry, task)
        try:
            BulkFeatureBuilder(registry, task, backend=self._get_backend(context)).build().execute(context)
        except Exception as error:  # Feast's contract: the job carries the error, the provider raises it
            return LocalMaterializationJob(job_id=job_id, status=MaterializationJobStatus.ERROR, error=error)
        return LocalMaterializationJob(job_id=job_id, status=MaterializationJobStatus.SUCCEEDED)
