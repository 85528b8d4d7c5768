"""Feast's Postgres offline store, with its point-in-time join planned as hash joins.

Postgres plans the range-and-key join inside Feast's per-view `__base` CTE as one row and joins
its two reads with a nested loop, users x users comparisons per view (docs/decisions.md, "Hash
joins"). `enable_nestloop = off` is set with `SET LOCAL`, for the retrieval query's own transaction
only; nothing else on the server or connection changes. The query text is Feast's, untouched.

`HashJoinRetrievalJob.iter_record_batches` runs the same query through a server-side cursor,
ordered by the entity, and yields Arrow batches: the tasks that work through a month read it a
chunk at a time (features/retrieval.py) instead of Feast's `fetchall` of every row.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import pyarrow as pa
from feast.errors import ZeroColumnQueryResult
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import (
    PostgreSQLOfflineStore,
    PostgreSQLOfflineStoreConfig,
    PostgreSQLRetrievalJob,
)
from feast.infra.utils.postgres.connection_utils import _get_conn
from feast.type_map import pg_type_code_to_arrow


class HashJoinPostgreSQLOfflineStoreConfig(PostgreSQLOfflineStoreConfig):
    """Feast's Postgres offline store config (same fields), selected by this store's class path."""

    type: Literal["streamflow_mlops.extensions.feast.offline_store.HashJoinPostgreSQLOfflineStore"] = (
        "streamflow_mlops.extensions.feast.offline_store.HashJoinPostgreSQLOfflineStore"
    )


class HashJoinRetrievalJob(PostgreSQLRetrievalJob):
    """Feast's retrieval job; its query runs in a transaction that plans without nested loops."""

    @classmethod
    def of(cls, job: PostgreSQLRetrievalJob) -> HashJoinRetrievalJob:
        return cls(
            query=job._query_generator,
            config=job.config,
            full_feature_names=job.full_feature_names,
            on_demand_feature_views=job.on_demand_feature_views,
            metadata=job.metadata,
        )

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        with self._query_generator() as query, _get_conn(self.config.offline_store) as conn, conn.cursor() as cur:
            conn.read_only = True
            cur.execute("SET LOCAL enable_nestloop = off")
            cur.execute(query)
            if not cur.description:
                raise ZeroColumnQueryResult(query)
            schema = pa.schema([(c.name, pg_type_code_to_arrow(c.type_code)) for c in cur.description])
            rows = cur.fetchall()
            # Like Feast: arrays inferred from the values, then cast by the table's schema.
            columns = [pa.array([row[i] for row in rows]) for i in range(len(schema))]
            return pa.Table.from_arrays(columns, schema=schema)

    def iter_record_batches(self, order_by: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """The retrieval's rows in `order_by` order, `batch_rows` at a time, through a server-side
        cursor: the client holds one batch, never the result (10M users x 14 features are ~10 GB as
        the Python tuples `_to_arrow_internal` fetches). Postgres sorts the result (on disk when it
        must); the arrays are built and cast by Feast's type map as in `_to_arrow_internal`."""
        with self._query_generator() as query, _get_conn(self.config.offline_store) as conn:
            conn.read_only = True
            with conn.transaction(), conn.cursor() as setup:
                setup.execute("SET LOCAL enable_nestloop = off")
                setup.execute("SET LOCAL work_mem = '256MB'")
                with conn.cursor(name="streamflow_retrieval") as cur:
                    cur.itersize = batch_rows
                    cur.execute(f'SELECT * FROM ({query}) AS retrieval ORDER BY "{order_by}" COLLATE "C"')
                    schema: pa.Schema | None = None
                    while rows := cur.fetchmany(batch_rows):
                        if schema is None:
                            schema = pa.schema([(c.name, pg_type_code_to_arrow(c.type_code)) for c in cur.description])
                        columns = [pa.array([row[i] for row in rows], type=f.type) for i, f in enumerate(schema)]
                        yield pa.RecordBatch.from_arrays(columns, schema=schema)


class HashJoinPostgreSQLOfflineStore(PostgreSQLOfflineStore):
    """Feast's Postgres offline store whose historical retrievals run as `HashJoinRetrievalJob`s."""

    @staticmethod
    def get_historical_features(*args: Any, **kwargs: Any) -> HashJoinRetrievalJob:
        return HashJoinRetrievalJob.of(PostgreSQLOfflineStore.get_historical_features(*args, **kwargs))
