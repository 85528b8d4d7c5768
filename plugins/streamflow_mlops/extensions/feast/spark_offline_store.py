"""Feast's Spark offline store, whose retrievals can be read a chunk at a time in entity order.

Feast's `SparkRetrievalJob` hands a result over whole (`to_df`, `to_arrow`: every row on the
driver) or as a Spark DataFrame. The tasks that work through a month (features/retrieval.py) need
it as the Postgres engine gives it: chunks of at most `batch_rows` rows in user_id order, with the
driver holding one chunk. Feast's point-in-time join has no ORDER BY, so the job's DataFrame is
sorted by Spark (binary string order, the warehouse's COLLATE "C"), written to the store's
`staging_location` as Parquet (range-partitioned files, in order), and read back file by file
with Arrow; the staged copy is removed when the reader is done. The query is Feast's, untouched.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from typing import Any, Literal
from urllib.parse import urlsplit

import pyarrow as pa
from feast.infra.offline_stores.contrib.spark_offline_store.spark import (
    SparkOfflineStore,
    SparkOfflineStoreConfig,
    SparkRetrievalJob,
)


class SortedSparkOfflineStoreConfig(SparkOfflineStoreConfig):
    """Feast's Spark offline store config (same fields), selected by this store's class path."""

    type: Literal["streamflow_mlops.extensions.feast.spark_offline_store.SortedSparkOfflineStore"] = (
        "streamflow_mlops.extensions.feast.spark_offline_store.SortedSparkOfflineStore"
    )


def arrow_filesystem(url: str):
    """An Arrow filesystem and path for a Hadoop-style URL (local path, file:, s3a:, hdfs:, gs:)."""
    from pyarrow import fs

    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        return fs.LocalFileSystem(), parts.path
    # Hadoop's s3a:// is Arrow's s3://; credentials come from the usual AWS variables.
    return fs.FileSystem.from_uri(url.replace("s3a://", "s3://", 1))


class SortedSparkRetrievalJob(SparkRetrievalJob):
    """Feast's Spark retrieval job, also readable in order a chunk at a time."""

    @classmethod
    def of(cls, job: SparkRetrievalJob) -> SortedSparkRetrievalJob:
        return cls(
            spark_session=job.spark_session,
            query=job.query,
            full_feature_names=job.full_feature_names,
            config=job._config,
            on_demand_feature_views=job.on_demand_feature_views,
            metadata=job.metadata,
        )

    def iter_record_batches(self, order_by: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """The retrieval's rows in `order_by` order, `batch_rows` at a time (see the module's docstring)."""
        import pyarrow.parquet as pq

        staging = self._config.offline_store.staging_location
        if not staging:
            raise ValueError("the spark offline store needs a staging_location to read retrievals in chunks")
        url = f"{staging.rstrip('/')}/{uuid.uuid4().hex}"
        filesystem, path = arrow_filesystem(url)
        try:
            self.to_spark_df().orderBy(order_by).write.parquet(url)
            files = sorted(
                info.path
                for info in filesystem.get_file_info(pa.fs.FileSelector(path))
                if info.base_name.startswith("part-") and info.base_name.endswith(".parquet")
            )
            for name in files:
                with filesystem.open_input_file(name) as handle:
                    yield from pq.ParquetFile(handle).iter_batches(batch_size=batch_rows)
        finally:
            if isinstance(filesystem, pa.fs.LocalFileSystem):
                shutil.rmtree(path, ignore_errors=True)
            elif filesystem.get_file_info(path).type != pa.fs.FileType.NotFound:
                filesystem.delete_dir(path)


class SortedSparkOfflineStore(SparkOfflineStore):
    """Feast's Spark offline store whose historical retrievals run as `SortedSparkRetrievalJob`s."""

    @staticmethod
    def get_historical_features(*args: Any, **kwargs: Any) -> SortedSparkRetrievalJob:
        return SortedSparkRetrievalJob.of(SparkOfflineStore.get_historical_features(*args, **kwargs))
