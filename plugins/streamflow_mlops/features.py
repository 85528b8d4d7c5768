"""Feast over the warehouse: apply the repo, materialize a month, check parity, build training sets
and look users up online.

One `FeatureStore` per settings, built from `feature_repo/feature_store.yaml` with the `${VARS}`
of `Settings.feast_env()` laid over the process environment, so the CLI (`source .streamflow/env`)
and the in-process code read the same file the same way without touching `os.environ`.

Two Feast extension classes named in that file do the heavy lifting: `BulkComputeEngine`
(`bulk_materialization.py`) materializes into the sqlite online store in bulk, and
`HashJoinPostgreSQLOfflineStore` (`offline_store.py`) keeps the point-in-time join linear.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import psycopg

from streamflow_mlops.generate import month_as_of, month_name, parse_month
from streamflow_mlops.schema import ENTITY, FEATURE_GROUPS, LABEL, TIMESTAMP
from streamflow_mlops.settings import FEATURE_SERVICE, WAREHOUSE_SCHEMA, Settings, get_settings

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureService, FeatureStore
    from feast.repo_config import RepoConfig

log = logging.getLogger(__name__)

FEATURE_STORE_YAML = "feature_store.yaml"
PARITY_SAMPLE = 200
# Feast cannot infer the timestamp column of a SQL entity dataframe (it sees only object dtypes), so
# the query names it the way Feast expects and the result is renamed back to the schema's `as_of`.
EVENT_TIMESTAMP = "event_timestamp"
SQLITE_BUSY_TIMEOUT_MS = 600_000
_VAR = re.compile(r"\$(\w+)|\$\{([^}]*)\}")


class FeatureParityError(RuntimeError):
    """Online values disagree with the offline point-in-time values at the same as_of."""


# ---------------------------------------------------------------- configuration


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """`os.path.expandvars` with an explicit mapping: `$NAME`/`${NAME}` replaced, unknown ones kept."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return env.get(name, match.group(0))

    return _VAR.sub(substitute, text)


def repo_config(settings: Settings | None = None) -> RepoConfig:
    """The RepoConfig of `feature_repo/`, variables taken from settings over the environment."""
    import yaml
    from feast.repo_config import RepoConfig

    settings = settings or get_settings()
    env = {**os.environ, **settings.feast_env()}
    text = (settings.feature_repo / FEATURE_STORE_YAML).read_text()
    config = RepoConfig(**yaml.safe_load(expand_vars(text, env)))
    config.repo_path = settings.feature_repo
    return config


@lru_cache(maxsize=4)
def _feature_store(settings: Settings) -> FeatureStore:
    from feast import FeatureStore

    # Feast's sqlite store makes the database's folder but not its parents.
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(settings.feature_repo), config=repo_config(settings))


def feature_store(settings: Settings | None = None) -> FeatureStore:
    """The FeatureStore for these settings, built once per settings and reused."""
    return _feature_store(settings or get_settings())


def month_as_of_ts(month: str | int) -> datetime:
    """A month's as_of as the snapshot tables store it: midnight UTC of the month's last day."""
    return datetime.combine(month_as_of(parse_month(month)), dt_time.min, tzinfo=UTC)


def materialization_window(as_of: datetime, ttl: timedelta) -> tuple[datetime, datetime]:
    """The explicit window whose latest rows are exactly what a point-in-time lookup at `as_of` sees.

    Feast's point-in-time join keeps rows with `as_of - ttl <= ts <= as_of`; materializing that
    same closed window (latest row per user) makes online == offline by construction, and, being
    derived from the month alone, re-running it writes the same values.
    """
    if ttl <= timedelta(0):
        raise ValueError("feature views need a positive ttl for an explicit materialization window")
    return as_of - ttl, as_of


# ---------------------------------------------------------------- apply


def _repo_contents(settings: Settings):
    """Parse `feature_repo/*.py` the way `feast apply` does (it imports them by bare module name)."""
    from feast.repo_operations import _get_repo_contents

    repo = str(settings.feature_repo)
    if repo not in sys.path:
        sys.path.append(repo)
    with contextlib.chdir(settings.feature_repo):
        return _get_repo_contents(settings.feature_repo, repo_config(settings).project)


def apply_repo(settings: Settings | None = None) -> dict[str, list[str]]:
    """`feast apply` in-process: register the repo's objects in the SQL registry, create online tables."""
    from feast.repo_operations import apply_total_with_repo_instance

    settings = settings or get_settings()
    store = feature_store(settings)
    contents = _repo_contents(settings)
    apply_total_with_repo_instance(store, store.project, store.registry, contents, skip_source_validation=False)
    store.refresh_registry()
    # Feast's plan for sqlite diffs against the tables the shared registry recorded, not against the
    # file: a new state dir over the same registry (an external Postgres) would get no tables at all.
    # Creating them is idempotent (CREATE TABLE IF NOT EXISTS).
    store._get_provider().update_infra(
        store.project,
        tables_to_delete=[],
        tables_to_keep=contents.feature_views,
        entities_to_delete=[],
        entities_to_keep=contents.entities,
        partial=False,
    )
    conn = _sqlite_connection(store)
    if conn is not None:
        # WAL (a property of the file, kept across connections): the service keeps reading while a
        # materialization writes, instead of waiting on, or timing out behind, the writer's lock.
        conn.execute("PRAGMA journal_mode = WAL")
    summary = {
        "entities": sorted(e.name for e in contents.entities if e.name != "__dummy"),
        "feature_views": sorted(v.name for v in contents.feature_views),
        "feature_services": sorted(s.name for s in contents.feature_services),
    }
    log.info("feast apply: %s", summary)
    return summary


# ---------------------------------------------------------------- feature service


def feature_service(name: str = FEATURE_SERVICE, settings: Settings | None = None) -> FeatureService:
    """The FeatureService as registered (not as declared in the repo files)."""
    return feature_store(settings).get_feature_service(name)


def feature_names(feature_service_name: str = FEATURE_SERVICE, settings: Settings | None = None) -> list[str]:
    """The features of a registered FeatureService, in its order: THE feature list."""
    service = feature_service(feature_service_name, settings)
    return [f.name for projection in service.feature_view_projections for f in projection.features]


# ---------------------------------------------------------------- materialize


def _snapshot_users(conn: psycopg.Connection, as_of: datetime) -> dict[str, int]:
    return {
        g.name: conn.execute(
            f"SELECT count(*) FROM {WAREHOUSE_SCHEMA}.{g.table} WHERE {TIMESTAMP} = %s", (as_of,)
        ).fetchone()[0]
        for g in FEATURE_GROUPS
    }


def split_views(weights: Mapping[str, int], workers: int) -> list[list[str]]:
    """Feature views dealt onto `workers` lists of about equal weight (largest first, to the lightest)."""
    bins: list[list[str]] = [[] for _ in range(max(1, min(workers, len(weights))))]
    loads = [0] * len(bins)
    for name in sorted(weights, key=lambda n: (-weights[n], n)):
        lightest = loads.index(min(loads))
        bins[lightest].append(name)
        loads[lightest] += weights[name]
    return [b for b in bins if b]


def _sqlite_connection(store: FeatureStore):
    """Feast's own sqlite connection of the store, or None for another online store."""
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    online = store._get_provider().online_store
    return online._get_conn(store.config) if isinstance(online, SqliteOnlineStore) else None


def _materialize_views(settings: Settings, views: list[str], start: datetime, end: datetime) -> None:
    """Materialize some feature views (also the entry point of a worker process)."""
    store = feature_store(settings)
    conn = _sqlite_connection(store)
    if conn is not None:
        # Workers take turns on sqlite's single write lock, one batch at a time; Feast's 5 s
        # default busy timeout is shorter than another worker's batch on a loaded machine.
        conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    store.materialize(start_date=start, end_date=end, feature_views=views)


def materialize_month(month: str | int, settings: Settings | None = None, workers: int = 1) -> dict[str, Any]:
    """Materialize the window ending at the month's as_of into the online store.

    Stateless and idempotent: the window comes from the month, not from Feast's "last
    materialized" bookmark. Fails when the month's snapshots are not loaded. `workers > 1` splits
    the feature views over that many processes (they take turns on sqlite's one write lock); one
    is the default, see bench/bench_features.py for both.
    """
    settings = settings or get_settings()
    store = feature_store(settings)
    as_of = month_as_of_ts(month)
    with psycopg.connect(settings.db_url) as conn:
        users = _snapshot_users(conn, as_of)
        newer = conn.execute(f"SELECT max({TIMESTAMP}) FROM {WAREHOUSE_SCHEMA}.{FEATURE_GROUPS[0].table}").fetchone()[0]
    empty = sorted(name for name, n in users.items() if n == 0)
    if empty:
        raise ValueError(f"{month_name(parse_month(month))}: no snapshot rows at {as_of:%Y-%m-%d} for {empty}")
    if newer is not None and newer > as_of:
        log.warning(
            "materializing %s while snapshots up to %s exist: the online store goes back to %s",
            month,
            newer.date(),
            as_of.date(),
        )

    views = {v.name: v for v in store.list_feature_views()}
    ttls = {v.ttl for v in views.values()}
    if len(ttls) != 1:
        raise ValueError(f"feature views disagree on ttl ({ttls}); one window per month needs one ttl")
    start, end = materialization_window(as_of, ttls.pop())
    weights = {name: users[name] * len(v.features) for name, v in views.items()}
    groups = split_views(weights, workers)

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
        "month": month_name(parse_month(month)),
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


# ---------------------------------------------------------------- offline (training, drift)


def _entity_query(table: str, as_of: datetime, extra: Sequence[str] = ()) -> str:
    """SQL for an entity dataframe: a month's users at its as_of (Feast runs it server-side)."""
    columns = "".join(f", {c}" for c in extra)
    day = as_of.date().isoformat()
    return (
        f"SELECT {ENTITY}, TIMESTAMPTZ '{as_of.isoformat()}' AS {EVENT_TIMESTAMP}{columns} "
        f"FROM {WAREHOUSE_SCHEMA}.{table} WHERE {TIMESTAMP} = DATE '{day}'"
    )


def _historical(entity_sql: str, feature_service_name: str, settings: Settings | None) -> pd.DataFrame:
    store = feature_store(settings)
    job = store.get_historical_features(entity_df=entity_sql, features=store.get_feature_service(feature_service_name))
    frame = job.to_df().rename(columns={EVENT_TIMESTAMP: TIMESTAMP})
    if frame[TIMESTAMP].dt.tz is None:
        frame[TIMESTAMP] = frame[TIMESTAMP].dt.tz_localize("UTC")
    return frame.sort_values(ENTITY, kind="stable").reset_index(drop=True)


def build_training_set(
    month: str | int, feature_service_name: str = FEATURE_SERVICE, settings: Settings | None = None
) -> pd.DataFrame:
    """Point-in-time training set: the month's labelled users at its as_of, every feature of the
    FeatureService as of then (nothing later), and `churn_label`. Columns: user_id, as_of,
    features in the service's order, churn_label."""
    as_of = month_as_of_ts(month)
    frame = _historical(_entity_query("labels", as_of, [LABEL]), feature_service_name, settings)
    if frame.empty:
        raise ValueError(f"{month_name(parse_month(month))}: no labelled users at {as_of.date()}")
    names = feature_names(feature_service_name, settings)
    return frame[[ENTITY, TIMESTAMP, *names, LABEL]]


def feature_frame(
    month: str | int, feature_service_name: str = FEATURE_SERVICE, settings: Settings | None = None
) -> pd.DataFrame:
    """The month's users (from `users`) with their point-in-time features at as_of; no labels needed."""
    as_of = month_as_of_ts(month)
    frame = _historical(_entity_query("users", as_of), feature_service_name, settings)
    names = feature_names(feature_service_name, settings)
    return frame[[ENTITY, TIMESTAMP, *names]]


# ---------------------------------------------------------------- online (serving)


@dataclass(frozen=True)
class OnlineLookup:
    """Online features of some users, unknown users and missing values stated, not guessed.

    `values[user]` maps every feature to its value (None when missing) for known users;
    `unknown` lists users with no value at all; `missing[user]` the features a known user lacks.
    """

    feature_names: tuple[str, ...]
    values: dict[str, dict[str, Any]]
    unknown: tuple[str, ...] = ()
    missing: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def complete(self) -> dict[str, dict[str, Any]]:
        """Users with every feature present: the ones a model can score."""
        return {user: row for user, row in self.values.items() if user not in self.missing}


def read_online_response(user_ids: Sequence[str], names: Sequence[str], response_proto) -> OnlineLookup:
    """An OnlineLookup from Feast's GetOnlineFeaturesResponse (one vector per feature, one slot per
    user), features in the order of `names` (Feast groups them by feature view)."""
    from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
    from feast.type_map import feast_value_type_to_python_type

    vectors = {
        name: vector
        for name, vector in zip(response_proto.metadata.feature_names.val, response_proto.results, strict=True)
        if name != ENTITY
    }
    values: dict[str, dict[str, Any]] = {}
    unknown: list[str] = []
    missing: dict[str, tuple[str, ...]] = {}
    for i, user in enumerate(user_ids):
        row: dict[str, Any] = {}
        absent: list[str] = []
        for name in names:
            proto = vectors[name].values[i]
            status = vectors[name].statuses[i]
            if status == FieldStatus.PRESENT and proto.WhichOneof("val") is not None:
                row[name] = feast_value_type_to_python_type(proto)
            else:
                row[name] = None
                absent.append(name)
        if len(absent) == len(names):
            unknown.append(user)
            continue
        values[user] = row
        if absent:
            missing[user] = tuple(absent)
    return OnlineLookup(tuple(names), values, tuple(unknown), missing)


_SERVICES: dict[tuple[Settings, str], tuple[float, FeatureService]] = {}


def _cached_feature_service(settings: Settings, name: str) -> FeatureService:
    """The FeatureService, re-read at most every registry cache period.

    Feast rebuilds the object from its protobuf on every `get_feature_service`, even from the
    registry cache: about 10 ms of type-checked constructors, ten times the online read itself.
    """
    store = feature_store(settings)
    key = (settings, name)
    loaded_at, service = _SERVICES.get(key, (float("-inf"), None))
    if service is None or time.monotonic() - loaded_at > store.config.registry.cache_ttl_seconds:
        service = store.get_feature_service(name, allow_cache=True)
        _SERVICES[key] = (time.monotonic(), service)
    return service


def online_features(
    user_ids: Iterable[str], feature_service_name: str = FEATURE_SERVICE, settings: Settings | None = None
) -> OnlineLookup:
    """Look users up in the online store through Feast, with exactly the FeatureService's features."""
    users = list(dict.fromkeys(user_ids))
    settings = settings or get_settings()
    store = feature_store(settings)
    service = _cached_feature_service(settings, feature_service_name)
    names = [f.name for projection in service.feature_view_projections for f in projection.features]
    if not users:
        return OnlineLookup(tuple(names), {})
    response = store.get_online_features(features=service, entity_rows=[{ENTITY: user} for user in users])
    return read_online_response(users, names, response.proto)


# ---------------------------------------------------------------- parity


def values_equal(offline: Any, online: Any) -> bool:
    """Same value after the offline (Arrow) and online (protobuf) round trips; NaN equals NaN."""
    if offline is None or online is None:
        return offline is None and online is None
    if isinstance(offline, float) or isinstance(online, float):
        if math.isnan(float(offline)) or math.isnan(float(online)):
            return math.isnan(float(offline)) and math.isnan(float(online))
        return math.isclose(float(offline), float(online), rel_tol=1e-12, abs_tol=1e-12)
    return offline == online


def parity_mismatches(offline: Mapping[str, Mapping[str, Any]], lookup: OnlineLookup) -> list[str]:
    """Every disagreement between offline rows (user -> feature -> value) and the online lookup."""
    problems = [f"{user}: not in the online store" for user in lookup.unknown if user in offline]
    for user, expected in offline.items():
        got = lookup.values.get(user)
        if got is None:
            continue
        for name, value in expected.items():
            if not values_equal(_plain(value), got.get(name)):
                problems.append(f"{user}.{name}: offline {value!r} != online {got.get(name)!r}")
    return problems


def _plain(value: Any) -> Any:
    """numpy scalars and pandas NA as plain Python values."""
    if value is None:
        return None
    with contextlib.suppress(TypeError, ValueError):
        import pandas as pd

        if pd.isna(value):
            return None
    return value.item() if hasattr(value, "item") else value


def parity_sample_users(conn: psycopg.Connection, as_of: datetime, size: int) -> list[str]:
    """A stable sample of the month's users: ordered by a hash, so a re-run checks the same users."""
    rows = conn.execute(
        f"SELECT {ENTITY} FROM {WAREHOUSE_SCHEMA}.{FEATURE_GROUPS[0].table} WHERE {TIMESTAMP} = %s "
        f"ORDER BY md5({ENTITY}) LIMIT %s",
        (as_of, size),
    ).fetchall()
    return [r[0] for r in rows]


def check_parity(
    month: str | int,
    sample: int = PARITY_SAMPLE,
    feature_service_name: str = FEATURE_SERVICE,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """For a sample of the month's users, online values must equal the offline point-in-time values
    at the month's as_of; raises FeatureParityError listing the disagreements otherwise."""
    import pandas as pd

    settings = settings or get_settings()
    as_of = month_as_of_ts(month)
    with psycopg.connect(settings.db_url) as conn:
        users = parity_sample_users(conn, as_of, sample)
    if not users:
        raise FeatureParityError(f"{month_name(parse_month(month))}: no users at {as_of.date()} to check")
    names = feature_names(feature_service_name, settings)
    store = feature_store(settings)
    entity_df = pd.DataFrame({ENTITY: users, EVENT_TIMESTAMP: [as_of] * len(users)})
    offline = store.get_historical_features(
        entity_df=entity_df, features=store.get_feature_service(feature_service_name)
    ).to_df()
    expected = {row[ENTITY]: {n: row[n] for n in names} for row in offline.to_dict("records")}
    lookup = online_features(users, feature_service_name, settings)
    problems = parity_mismatches(expected, lookup)
    report = {
        "month": month_name(parse_month(month)),
        "as_of": as_of.date().isoformat(),
        "users_checked": len(users),
        "features": len(names),
        "mismatches": len(problems),
    }
    if problems:
        shown = "\n  ".join(problems[:20])
        raise FeatureParityError(
            f"online/offline parity failed for {report['month']} ({len(problems)} mismatches over "
            f"{len(users)} users):\n  {shown}"
        )
    log.info("parity ok: %s", report)
    return report
