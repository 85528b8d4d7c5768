"""The spark engine's tables: Parquet under the lake (STREAMFLOW_LAKE_URL), one folder per month.

Layout, one table per warehouse table and the same columns:

    <lake>/<table>/as_of=<YYYY-MM-DD>/part-*.parquet      raw tables and snapshot tables
    <lake>/<table>/_staging/...                           a month being written (Spark skips `_` folders)

`as_of` is the partition column (a date in the folder name, as Spark's partition discovery reads
it); a snapshot table's rows stand at midnight UTC of that date, which its readers
(features/definitions.py) restore as the timestamp Feast joins on.

A month is replaced whole: written aside under `_staging`, then swapped for the month's folder.
On a local lake the swap is one `renameat2(RENAME_EXCHANGE)`, atomic: a reader lists either the
old month or the new one, never a mix or nothing. On an object store (`s3a://`) a folder rename is
a copy and a delete, not atomic; the month is then replaced by delete-and-rename through Hadoop's
FileSystem, and a reader during it may see the month missing (docs/spark.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import uuid
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from streamflow_mlops.config.schema import TIMESTAMP

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

STAGING = "_staging"
RENAME_EXCHANGE = 2
AT_FDCWD = -100


def is_local(lake_url: str) -> bool:
    return urlsplit(lake_url).scheme in ("", "file")


def local_path(url: str) -> Path:
    return Path(urlsplit(url).path if url.startswith("file:") else url)


def table_url(lake_url: str, table: str) -> str:
    return f"{lake_url}/{table}"


def partition_dir(value: date | str, column: str = TIMESTAMP) -> str:
    """A month's folder name: `as_of=2024-01-31` (or `month=month_000` for a table keyed by month)."""
    return f"{column}={value.isoformat() if isinstance(value, date) else value}"


def partition_url(lake_url: str, table: str, value: date | str, column: str = TIMESTAMP) -> str:
    """Where the month `value` of `table` lives (pure)."""
    return f"{table_url(lake_url, table)}/{partition_dir(value, column)}"


def staging_url(lake_url: str, table: str, value: date | str, column: str = TIMESTAMP) -> str:
    """A fresh folder to write the month aside in, under the table's `_staging` (pure but for the token)."""
    return f"{table_url(lake_url, table)}/{STAGING}/{partition_dir(value, column)}.{uuid.uuid4().hex[:12]}"


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths in one step (Linux renameat2 with RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    result = libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(code)}")


def swap_in_local(staged: Path, target: Path) -> None:
    """Make `staged` the month's folder `target`, atomically, and remove what `target` held."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(staged, target)
        return
    except OSError as exc:
        # The month exists (ENOTEMPTY/EEXIST): exchange the two, then delete the old one aside.
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR):
            raise
    try:
        _exchange(staged, target)
    except (OSError, AttributeError) as exc:
        # NFS and some FUSE filesystems refuse RENAME_EXCHANGE (EINVAL), old C libraries lack
        # renameat2: the old month is moved aside first, then the new one in; not atomic (a reader
        # between the two renames finds the month missing).
        if isinstance(exc, OSError) and exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        aside = staged.with_name(f"{staged.name}.old")
        os.rename(target, aside)
        os.rename(staged, target)
        staged = aside
    shutil.rmtree(staged)


def _hadoop_fs(spark: SparkSession, url: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(url)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path, jvm


def swap_in(spark: SparkSession | None, staged_url: str, target_url: str) -> None:
    """Replace the month at `target_url` by the folder at `staged_url` (see the module's docstring)."""
    if is_local(target_url):
        swap_in_local(local_path(staged_url), local_path(target_url))
        return
    fs, target, jvm = _hadoop_fs(spark, target_url)
    if fs.exists(target):
        fs.delete(target, True)
    fs.mkdirs(target.getParent())
    if not fs.rename(jvm.org.apache.hadoop.fs.Path(staged_url), target):
        raise OSError(f"could not rename {staged_url} to {target_url}")


def remove(spark: SparkSession | None, url: str) -> None:
    """Remove a folder of the lake (a month, or one written aside and never swapped in), if there."""
    if is_local(url):
        shutil.rmtree(local_path(url), ignore_errors=True)
        return
    fs, path, _ = _hadoop_fs(spark, url)
    if fs.exists(path):
        fs.delete(path, True)


def drop_partition(spark: SparkSession | None, lake_url: str, table: str, as_of: date) -> None:
    """Remove the month of `table`, if it is there."""
    remove(spark, partition_url(lake_url, table, as_of))


def remove_staged(spark: SparkSession | None, staged_url: str) -> None:
    """Clean up a month written aside and never swapped in (a failed load)."""
    remove(spark, staged_url)


def months(lake_url: str, table: str) -> list[date]:
    """The months a local lake table holds, oldest first (object stores: read the table instead)."""
    root = local_path(table_url(lake_url, table))
    if not root.is_dir():
        return []
    prefix = f"{TIMESTAMP}="
    return sorted(date.fromisoformat(p.name[len(prefix) :]) for p in root.iterdir() if p.name.startswith(prefix))
