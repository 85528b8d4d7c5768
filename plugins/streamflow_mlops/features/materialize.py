"""Materializing a month into the online store over an explicit window derived from the month alone (re-runs
write the same values)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import FEATURE_GROUPS, TIMESTAMP
from streamflow_mlops.config.settings import WAREHOUSE_SCHEMA, Settings, get_settings
from streamflow_mlops.extensions.feast.sqlite_store import feast_connection
from streamflow_mlops.features.store import SQLITE_BUSY_TIMEOUT_MS, feature_store, sqlite_path

log = logging.getLogger(__name__)


def materialization_window(as_of: datetime, ttl: timedelta) -> tuple[datetime, datetime]:
    """The explicit window whose latest rows are exactly what a point-in-time lookup at `as_of` sees.

    Feast's point-in-time join keeps rows with `as_of - ttl <= ts <= as_of`; materializing that
    same closed window (latest row per user) makes online == offline by construction, and, being
    derived from the month alone, re-running it writes the same values.
    """
    if ttl <= timedelta(0):
        raise ValueError("feature views need a positive ttl for an explicit materialization window")
    return as_of - ttl, as_of


def snapshot_facts(settings: Settings, as_of: datetime) -> tuple[dict[str, int], datetime | None]:
    """Each view's users at `as_of`, and the newest snapshot the engine's tables hold."""
    if settings.engine == "spark":
        return _lake_snapshot_facts(settings, as_of)
    with psycopg.connect(settings.db_url) as conn:
        users = {
            g.name: conn.execute(
                f"SELECT count(*) FROM {WAREHOUSE_SCHEMA}.{g.table} WHERE {TIMESTAMP} = %s", (as_of,)
            ).fetchone()[0]
            for g in FEATURE_GROUPS
        }
        newest = conn.execute(f"SELECT max({TIMESTAMP}) FROM {WAREHOUSE_SCHEMA}.{FEATURE_GROUPS[0].table}").fetchone()
    return users, newest[0]


def _lake_snapshot_facts(settings: Settings, as_of: datetime) -> tuple[dict[str, int], datetime | None]:
    from pyspark.errors import AnalysisException

    from streamflow_mlops.data.spark import spark_session
    from streamflow_mlops.features.definitions import lake_table_sql

    spark = spark_session(settings)
    users, newest = {}, None
    for g in FEATURE_GROUPS:
        table = lake_table_sql(settings.lake_url, g.table)
        try:
            row = spark.sql(
                f"SELECT count_if({TIMESTAMP} = DATE '{as_of.date()}'), max({TIMESTAMP}) FROM {table}"
            ).first()
        except AnalysisException:  # no month loaded yet: the table's folder does not exist
            row = (0, None)
        users[g.name] = int(row[0] or 0)
        if g is FEATURE_GROUPS[0] and row[1] is not None:
            newest = datetime.combine(row[1], datetime.min.time(), tzinfo=UTC)
    return users, newest


def split_views(weights: Mapping[str, int], workers: int) -> list[list[str]]:
    """Feature views dealt onto `workers` lists of about equal weight (largest first, to the lightest)."""
    bins: list[list[str]] = [[] for _ in range(max(1, min(workers, len(weights))))]
    loads = [0] * len(bins)
    for name in sorted(weights, key=lambda n: (-weights[n], n)):
        lightest = loads.index(min(loads))
        bins[lightest].append(name)
        loads[lightest] += weights[name]
    return [b for b in bins if b]


def _materialize_views(settings: Settings, views: list[str], start: datetime, end: datetime) -> None:
    """Materialize some feature views (also the entry point of a worker process)."""
    store = feature_store(settings)
    if settings.engine == "spark":
        from streamflow_mlops.data.spark import is_local, spark_session

        if not is_local(settings.spark_master) and sqlite_path(store) is not None:
            raise ValueError(
                "the sqlite online store is a file on this machine, which a cluster's executors cannot write: "
                "set STREAMFLOW_FEAST_ONLINE_STORE to a Redis store (docs/spark.md)"
            )
        spark_session(settings)  # the library's session, before Feast's compute engine starts a default one
    conn = feast_connection(store)
    if conn is not None:
        # Workers take turns on sqlite's single write lock, one batch at a time; Feast's 5 s
        # default busy timeout is shorter than another worker's batch on a loaded machine.
        conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    store.materialize(start_date=start, end_date=end, feature_views=views)


def older_than_published(as_of: datetime, newest_snapshot: datetime | None, force: bool) -> str | None:
    """Why materializing `as_of` would move the online store back in time, or None (pure).

    The online store serves the newest month the warehouse holds; an older month re-delivered (or
    re-run) must not overwrite it with older values unless a run asks for it (`force`, a backfill).
    """
    if force or newest_snapshot is None or newest_snapshot <= as_of:
        return None
    return (
        f"snapshots up to {newest_snapshot:%Y-%m-%d} exist; materializing {as_of:%Y-%m-%d} would move the "
        "online store back in time (run with force=true for a deliberate backfill)"
    )


def materialize_month(
    month: str | Month, settings: Settings | None = None, workers: int = 1, force: bool = False
) -> dict[str, Any]:
    """Materialize the window ending at the month's as_of into the online store.

    Stateless and idempotent: the window comes from the month, not from Feast's "last
    materialized" bookmark. Fails when the month's snapshots are not loaded; skips (the report
    says why, `skipped`) a month older than the newest loaded one unless `force`. `workers > 1`
    splits the feature views over that many processes (they take turns on sqlite's one write
    lock); one is the default, see bench/bench_features.py for both. Into sqlite each view is read
    and written `STREAMFLOW_CHUNK_ROWS` rows at a time (extensions/feast/bulk_materialization.py), so a
    process's memory does not grow with the month.
    """
    settings = settings or get_settings()
    store = feature_store(settings)
    month = Month.parse(month)
    as_of = month.as_of_ts
    users, newer = snapshot_facts(settings, as_of)
    empty = sorted(name for name, n in users.items() if n == 0)
    if empty:
        raise ValueError(f"{month}: no snapshot rows at {as_of:%Y-%m-%d} for {empty}")
    backwards = older_than_published(as_of, newer, force)
    if backwards:
        log.warning("%s not materialized: %s", month, backwards)
        return {"month": month.name, "as_of": as_of.date().isoformat(), "skipped": backwards}
    if newer is not None and newer > as_of:
        log.warning("materializing %s (force): the online store goes back to %s", month, as_of.date())

    views = {v.name: v for v in store.list_feature_views()}
    ttls = {v.ttl for v in views.values()}
    if len(ttls) != 1:
        raise ValueError(f"feature views disagree on ttl ({ttls}); one window per month needs one ttl")
    start, end = materialization_window(as_of, ttls.pop())
    weights = {name: users[name] * len(v.features) for name, v in views.items()}
    # On Spark the executors share the work out; more driver processes would only start more sessions.
    groups = split_views(weights, 1 if settings.engine == "spark" else workers)

    started = time.perf_counter()
    if len(groups) == 1:
        _materialize_views(settings, groups[0], start, end)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the parent holds DB pools and (under Airflow) supervisor sockets.
        with ProcessPoolExecutor(len(groups), mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in [pool.submit(_materialize_views, settings, g, start, end) for g in groups]:
                done.result()
    seconds = time.perf_counter() - started
    total_users = max(users.values())
    report = {
        "month": month.name,
        "as_of": as_of.date().isoformat(),
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
        "users": users,
        "workers": len(groups),
        "seconds": round(seconds, 3),
        "users_per_s": round(total_users / seconds, 1) if seconds else None,
    }
    log.info("materialized %s", report)
    return report
