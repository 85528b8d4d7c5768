"""The one declaration of tables, columns, entity, label and the numeric/categorical split.

Great Expectations suites, warehouse DDL, Feast feature views, the training pipeline's
preprocessing and Evidently's column mapping are all derived from these objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DType = Literal["str", "int", "float", "bool"]

ENTITY = "user_id"
TIMESTAMP = "as_of"
LABEL = "churn_label"
NET_SERVICES = ("DSL", "Fiber optic", "No")
# Telco-style customer ids: four digits, a dash, five capital letters.
USER_ID_REGEX = r"^[0-9]{4}-[A-Z]{5}$"

SQL_TYPES = {"str": "TEXT", "int": "BIGINT", "float": "DOUBLE PRECISION", "bool": "BOOLEAN"}


@dataclass(frozen=True)
class Column:
    name: str
    dtype: DType
    min_value: float | None = None
    max_value: float | None = None
    allowed: tuple[str, ...] | None = None

    @property
    def categorical(self) -> bool:
        return self.dtype in ("str", "bool")


@dataclass(frozen=True)
class Table:
    """A raw monthly CSV and its warehouse table; `snapshot` names the feature view it feeds."""

    name: str
    columns: tuple[Column, ...]
    snapshot: str | None = None

    @property
    def file(self) -> str:
        return f"{self.name}.csv"

    @property
    def column_names(self) -> list[str]:
        return [ENTITY] + [c.name for c in self.columns]


# Plausible maxima are generous bounds a real feed never reaches; they catch unit errors
# (minutes written as seconds, cents as dollars) rather than police the distribution.
USERS = Table(
    "users",
    (
        Column("months_active", "int", 0, 600),
        Column("paperless_billing", "bool"),
    ),
    snapshot="subscriptions_profile",
)
SUBSCRIPTIONS = Table(
    "subscriptions",
    (
        Column("monthly_fee", "float", 0, 1000),
        Column("plan_stream_tv", "bool"),
        Column("plan_stream_movies", "bool"),
        Column("net_service", "str", allowed=NET_SERVICES),
    ),
    snapshot="subscriptions_profile",
)
USAGE = Table(
    "usage_agg_30d",
    (
        Column("watch_hours_30d", "float", 0, 720),
        Column("avg_session_mins_7d", "float", 0, 1440),
        Column("unique_devices_30d", "int", 0, 100),
        Column("skips_7d", "int", 0, 10000),
        Column("rebuffer_events_7d", "int", 0, 10000),
    ),
    snapshot="usage_agg_30d",
)
PAYMENTS = Table(
    "payments_agg_90d",
    (Column("failed_payments_90d", "int", 0, 90),),
    snapshot="payments_agg_90d",
)
SUPPORT = Table(
    "support_agg_90d",
    (
        Column("support_tickets_90d", "int", 0, 1000),
        Column("ticket_avg_resolution_hrs_90d", "float", 0, 2160),
    ),
    snapshot="support_agg_90d",
)
LABELS = Table("labels", (Column(LABEL, "int", 0, 1),))

RAW_TABLES: tuple[Table, ...] = (USERS, SUBSCRIPTIONS, USAGE, PAYMENTS, SUPPORT, LABELS)
# Who the retention team actually reached from the previous month's contact list: in a
# drop when there is something to report, validated and loaded like the others when it is there;
# a drop without it (every drop before campaigns) is as valid as ever. Its users need not be in
# this month's users.csv (a user reached last month may have churned since), nor be all of them.
CONTACTS = Table("contacts", ())
OPTIONAL_TABLES: tuple[Table, ...] = (CONTACTS,)


@dataclass(frozen=True)
class FeatureGroup:
    """One point-in-time snapshot table and the Feast feature view over it."""

    name: str
    sources: tuple[Table, ...]

    @property
    def table(self) -> str:
        return f"{self.name}_snapshots"

    @property
    def columns(self) -> tuple[Column, ...]:
        return tuple(c for t in self.sources for c in t.columns)


FEATURE_GROUPS: tuple[FeatureGroup, ...] = (
    FeatureGroup("subscriptions_profile", (USERS, SUBSCRIPTIONS)),
    FeatureGroup("usage_agg_30d", (USAGE,)),
    FeatureGroup("payments_agg_90d", (PAYMENTS,)),
    FeatureGroup("support_agg_90d", (SUPPORT,)),
)

FEATURES: tuple[Column, ...] = tuple(c for g in FEATURE_GROUPS for c in g.columns)
FEATURE_NAMES: tuple[str, ...] = tuple(c.name for c in FEATURES)
NUMERIC_FEATURES: tuple[str, ...] = tuple(c.name for c in FEATURES if not c.categorical)
CATEGORICAL_FEATURES: tuple[str, ...] = tuple(c.name for c in FEATURES if c.categorical)


def table(name: str) -> Table:
    return next(t for t in RAW_TABLES + OPTIONAL_TABLES if t.name == name)


def feature_column(name: str) -> Column:
    return next(c for c in FEATURES if c.name == name)
