"""Online/offline parity: after materializing, a sample of users must read the same values online as offline."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import psycopg

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY, FEATURE_GROUPS, TIMESTAMP
from streamflow_mlops.config.settings import FEATURE_SERVICE, WAREHOUSE_SCHEMA, Settings, get_settings
from streamflow_mlops.features.online import OnlineLookup, online_features
from streamflow_mlops.features.retrieval import EVENT_TIMESTAMP
from streamflow_mlops.features.store import feature_names, feature_store

log = logging.getLogger(__name__)


PARITY_SAMPLE = 200


class FeatureParityError(RuntimeError):
    """Online values disagree with the offline point-in-time values at the same as_of."""


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


def lake_parity_sample_users(settings: Settings, as_of: datetime, size: int) -> list[str]:
    """`parity_sample_users` on the spark engine: the same users, from the lake's snapshot table."""
    from streamflow_mlops.data.spark import spark_session
    from streamflow_mlops.features.definitions import lake_table_sql

    rows = (
        spark_session(settings)
        .sql(
            f"SELECT {ENTITY} FROM {lake_table_sql(settings.lake_url, FEATURE_GROUPS[0].table)} "
            f"WHERE {TIMESTAMP} = DATE '{as_of.date()}' ORDER BY md5({ENTITY}) LIMIT {int(size)}"
        )
        .collect()
    )
    return [r[0] for r in rows]


def check_parity(
    month: str | Month,
    sample: int = PARITY_SAMPLE,
    feature_service_name: str = FEATURE_SERVICE,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """For a sample of the month's users, online values must equal the offline point-in-time values
    at the month's as_of; raises FeatureParityError listing the disagreements otherwise."""
    import pandas as pd

    settings = settings or get_settings()
    month = Month.parse(month)
    as_of = month.as_of_ts
    if settings.engine == "spark":
        users = lake_parity_sample_users(settings, as_of, sample)
    else:
        with psycopg.connect(settings.db_url) as conn:
            users = parity_sample_users(conn, as_of, sample)
    if not users:
        raise FeatureParityError(f"{month}: no users at {as_of.date()} to check")
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
        "month": month.name,
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
