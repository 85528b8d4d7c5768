"""Feast plugins and the few Feast internals they need.

- `offline_store`: Feast's Postgres offline store whose point-in-time join runs without nested
  loops, streamed in batches (docs/decisions.md, "Hash joins").
- `bulk_materialization`: Feast's local compute engine writing into its sqlite online store in
  bulk, a chunk at a time (docs/decisions.md, "Bulk materialization"); upstream asks for the same
  in feast-dev/feast#2594 (materialization speed) and #2071 (memory), both closed unfixed.
- `sqlite_store`: the sqlite online store's table layout, read directly by the service.
- `spark_offline_store` (spark engine): Feast's Spark offline store whose retrievals are read back
  a chunk at a time in user_id order, as the Postgres one's are.

The first two are named by class path in `feature_repo/feature_store.yaml`, the last in
`feature_repo/feature_store.spark.yaml`.
"""

UPSTREAM = "feast==0.67.0"
PATCHED = (
    "feast.infra.compute_engines.local.compute:LocalComputeEngine._materialize_one",
    "feast.infra.compute_engines.local.compute:LocalComputeEngine._get_backend",
    "feast.infra.compute_engines.local.feature_builder:LocalFeatureBuilder",
    "feast.infra.compute_engines.dag.plan:ExecutionPlan.execute",
    "feast.infra.compute_engines.local.nodes:LocalOutputNode.execute",
    "feast.infra.compute_engines.local.nodes:LocalSourceReadNode.execute",
    "feast.infra.compute_engines.local.nodes:LocalFilterNode.execute",
    "feast.infra.compute_engines.local.nodes:LocalDedupNode.execute",
    "feast.utils:_coerce_datetime",
    "feast.infra.online_stores.sqlite:SqliteOnlineStore._get_conn",
    "feast.infra.online_stores.sqlite:SqliteOnlineStore.online_write_batch",
    "feast.infra.online_stores.sqlite:SqliteOnlineStore.update",
    "feast.infra.online_stores.sqlite:_table_id",
    "feast.infra.online_stores.sqlite:_quote_id",
    "feast.feature_store:FeatureStore._get_provider",
    "feast.infra.offline_stores.contrib.postgres_offline_store.postgres:PostgreSQLRetrievalJob._to_arrow_internal",
    "feast.infra.offline_stores.contrib.postgres_offline_store.postgres:PostgreSQLRetrievalJob.__init__",
    "feast.infra.utils.postgres.connection_utils:_get_conn",
    "feast.infra.offline_stores.contrib.spark_offline_store.spark:SparkRetrievalJob.__init__",
    "feast.infra.offline_stores.contrib.spark_offline_store.spark:SparkRetrievalJob.to_spark_df",
)
