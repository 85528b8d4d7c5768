"""Seeded generator of monthly data drops (docs/architecture.md, "Data").

Each drop `month_NNN/` holds the six raw CSVs, `manifest.json` with its `as_of`, and
`_truth.csv` with every user's true churn probability (never read by the pipeline; it gives
the best achievable AUC). The same population is followed month to month: profile traits are
drawn once per user, behaviour (usage, payments, support) is drawn afresh each month.

Label lag (`label_lag=1`, `generate --label-lag 1`): month M's `labels.csv` holds the outcomes of
the period that started at month M-1's as_of (the same draws month M-1 would carry with lag 0),
the manifest says `labels_as_of`, and `_truth.csv` holds the probabilities of that period. The
first `label_lag` months have no earlier period: they carry their own period's labels, the
labelled history a platform starts from. With lag 0 the drops are byte for byte as before.

Treatment effect (`generate --treatment-effect 0.3`): the previous month's exported
contact list was worked, `contacts.csv` says who was reached (all of the list, or a seeded
`--reach` share of it), and each reached user's churn probability for the period this drop's labels
describe is multiplied by `1 - effect` (the labels the next drop brings are the campaign's outcomes,
pipelines/campaigns.py). The labels come from the same uniform draws as without the effect, so a
treated user can only move from churned to stayed, and an effect of 0 changes no label.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import CONTACTS, ENTITY, LABEL, NET_SERVICES, RAW_TABLES

log = logging.getLogger(__name__)

TARGET_CHURN_RATE = 0.26
LETTERS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))


@dataclass(frozen=True)
class Drift:
    """How a month departs from the reference population."""

    fee_rise: float = 0.0  # relative monthly-fee increase, 0.15 = +15%
    usage_drop: float = 0.0  # relative drop in watch hours and session length
    rebuffer_factor: float = 1.0  # multiplier on rebuffering events
    fiber_shift: float = 0.0  # share of DSL users moved to Fiber optic

    @property
    def is_none(self) -> bool:
        return self == Drift()


NO_DRIFT = Drift()
# month_001's default: a price rise, a usage drop and a CDN incident, the kind of month that
# should trigger a retrain.
DEFAULT_DRIFT = Drift(fee_rise=0.15, usage_drop=0.3, rebuffer_factor=2.0, fiber_shift=0.2)

BREAKAGES = {
    "negative_fee": "monthly_fee below zero for some users",
    "unknown_net_service": "net_service values outside {DSL, Fiber optic, No}",
    "duplicate_users": "user_id repeated in users.csv",
    "missing_column": "watch_hours_30d column dropped from usage_agg_30d.csv",
    "orphan_keys": "usage rows for user_ids that are not in users.csv",
    "bad_label": "churn_label values of 2",
    "non_numeric": "text in a numeric column (skips_7d)",
    "empty_labels": "labels.csv with a header and no rows",
}


@dataclass(frozen=True)
class DropSpec:
    month: int
    users: int = 7043
    seed: int = 42
    drift: Drift = field(default_factory=Drift)
    broken: str | None = None
    label_lag: int = 0
    # The drift of the month whose outcomes `labels.csv` holds (with a label lag, an earlier one).
    labelled_drift: Drift = field(default_factory=Drift)
    # Relative churn reduction of a reached user: 0.3 multiplies their probability by 0.7.
    treatment_effect: float = 0.0

    @property
    def name(self) -> str:
        return Month(self.month).name

    @property
    def as_of(self) -> date:
        return Month(self.month).as_of

    @property
    def labelled_month(self) -> int:
        """The month whose period `labels.csv` labels: `label_lag` months back, or its own for the first ones."""
        return self.month - self.label_lag if self.month >= self.label_lag else self.month

    @property
    def labels_as_of(self) -> date:
        return Month(self.labelled_month).as_of


def user_ids(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unique Telco-style ids like `7590-VHVEG`."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        k = int((n - len(out)) * 1.05) + 16
        digits = rng.integers(0, 10_000, size=k)
        letters = LETTERS[rng.integers(0, 26, size=(k, 5))]
        ids = np.char.add(np.char.add(np.char.zfill(digits.astype(str), 4), "-"), letters.view("<U5").ravel())
        for uid in pd.unique(ids):
            if uid not in seen:
                seen.add(uid)
                out.append(uid)
                if len(out) == n:
                    break
    return np.array(out)


def _telco_profiles(path: Path, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    telco = pd.read_csv(path)
    rows = telco.iloc[rng.integers(0, len(telco), size=n)]
    return {
        "months_active": rows["tenure"].to_numpy(dtype=np.int64),
        "base_fee": rows["MonthlyCharges"].to_numpy(dtype=np.float64),
        "paperless_billing": (rows["PaperlessBilling"] == "Yes").to_numpy(),
        "plan_stream_tv": (rows["StreamingTV"] == "Yes").to_numpy(),
        "plan_stream_movies": (rows["StreamingMovies"] == "Yes").to_numpy(),
        "net_service": rows["InternetService"].to_numpy(dtype=object),
    }


def _synthetic_profiles(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    # Shapes follow the public Telco data: a U-shaped tenure, fees tied to the plan.
    tenure = np.where(rng.random(n) < 0.35, rng.integers(0, 12, n), rng.integers(0, 73, n))
    net = rng.choice(np.array(NET_SERVICES, dtype=object), size=n, p=[0.34, 0.44, 0.22])
    has_net = net != "No"
    tv = has_net & (rng.random(n) < 0.55)
    movies = has_net & (rng.random(n) < 0.55)
    fee = 20 + 25 * (net == "DSL") + 50 * (net == "Fiber optic") + 10 * tv + 10 * movies + rng.normal(0, 4, n)
    return {
        "months_active": tenure.astype(np.int64),
        "base_fee": np.clip(fee, 18.0, 120.0),
        "paperless_billing": rng.random(n) < 0.59,
        "plan_stream_tv": tv,
        "plan_stream_movies": movies,
        "net_service": net,
    }


def _population(users: int, seed: int, telco_csv: Path | None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, 0])
    profiles = _telco_profiles(telco_csv, users, rng) if telco_csv else _synthetic_profiles(users, rng)
    profiles[ENTITY] = user_ids(users, rng)
    # Latent engagement: a stable per-user taste for watching that the usage columns reveal noisily.
    profiles["engagement"] = rng.normal(0, 1, users)
    return profiles


def _behaviour(pop: dict[str, np.ndarray], month: int, seed: int, drift: Drift) -> dict[str, np.ndarray]:
    n = len(pop[ENTITY])
    rng = np.random.default_rng([seed, 1, month])
    net = pop["net_service"].copy()
    if drift.fiber_shift:
        net = np.where((net == "DSL") & (rng.random(n) < drift.fiber_shift), "Fiber optic", net).astype(object)
    fee = pop["base_fee"] * (1 + drift.fee_rise) + 10 * ((net == "Fiber optic") & (pop["net_service"] == "DSL"))
    engagement = pop["engagement"] + rng.normal(0, 0.35, n)
    usage = (1 - drift.usage_drop) * np.exp(0.55 * engagement)
    watch = np.clip(rng.gamma(2.0, 14.0, n) * usage, 0, 720)
    session = np.clip(rng.gamma(3.0, 12.0, n) * np.sqrt(usage), 0, 1440)
    devices = np.clip(rng.poisson(1.2 + 0.8 * (usage > 1)), 1, 12)
    skips = rng.poisson(3 + 6 * np.exp(-0.5 * engagement))
    fiber = net == "Fiber optic"
    rebuffer = rng.poisson(drift.rebuffer_factor * (1.0 + 2.5 * fiber + 1.5 * (net == "No")))
    failed = rng.poisson(np.where(pop["paperless_billing"], 0.35, 0.15))
    tickets = rng.poisson(0.4 + 0.15 * rebuffer + 0.6 * failed)
    resolution = np.where(tickets > 0, rng.gamma(2.0, 12.0, n) * (1 + 0.3 * fiber), 0.0)
    return {
        "months_active": pop["months_active"] + month,
        "monthly_fee": np.round(fee, 2),
        "net_service": net,
        "watch_hours_30d": np.round(watch, 2),
        "avg_session_mins_7d": np.round(session, 2),
        "unique_devices_30d": devices.astype(np.int64),
        "skips_7d": skips.astype(np.int64),
        "rebuffer_events_7d": rebuffer.astype(np.int64),
        "failed_payments_90d": failed.astype(np.int64),
        "support_tickets_90d": tickets.astype(np.int64),
        "ticket_avg_resolution_hrs_90d": np.round(resolution, 2),
        "engagement": engagement,
    }


def churn_logit(pop: dict[str, np.ndarray], beh: dict[str, np.ndarray]) -> np.ndarray:
    """How churn depends on behaviour: new users, high fees, failed payments, rebuffering and
    slow support push it up; engaged, long-tenured, bundled users stay."""
    tenure = beh["months_active"]
    return 1.45 * (
        1.6 * np.exp(-tenure / 8.0)
        - 0.012 * tenure
        + 0.022 * (beh["monthly_fee"] - 65)
        + 0.55 * (beh["net_service"] == "Fiber optic")
        + 0.25 * pop["paperless_billing"]
        - 0.35 * (pop["plan_stream_tv"] & pop["plan_stream_movies"])
        - 0.55 * beh["engagement"]
        + 0.75 * np.minimum(beh["failed_payments_90d"], 3)
        + 0.9 * np.tanh(beh["rebuffer_events_7d"] / 4.0)
        + 0.3 * np.minimum(beh["support_tickets_90d"], 4)
        + 0.35 * (beh["ticket_avg_resolution_hrs_90d"] > 36)
    )


def _intercept(logit: np.ndarray, rate: float) -> float:
    """Intercept that makes the mean churn probability equal `rate` (bisection)."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1 / (1 + np.exp(-(logit + mid)))) > rate:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def _churn(pop: dict[str, np.ndarray], month: int, seed: int, drift: Drift) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A month's behaviour and every user's true churn probability for the period starting at its as_of."""
    # The intercept is fixed on the undrifted month, so drift really moves the churn rate.
    reference = churn_logit(pop, _behaviour(pop, month, seed, NO_DRIFT))
    beh = _behaviour(pop, month, seed, drift)
    prob = 1 / (1 + np.exp(-(churn_logit(pop, beh) + _intercept(reference, TARGET_CHURN_RATE))))
    return beh, prob


def find_contact_list(scores_dir: Path, month: int) -> Path:
    """The contact list exported for `month` (`<month>_top<k>.csv`, the newest when several k were
    exported); FileNotFoundError when that month's list was never exported."""
    lists = [p for p in scores_dir.glob(f"{Month(month).name}_top*.csv") if not p.stem.endswith("_control")]
    if not lists:
        raise FileNotFoundError(
            f"no contact list of {Month(month).name} under {scores_dir}: score that month first "
            "(streamflow_score), or pass --contact-list"
        )
    return max(lists, key=lambda p: (p.stat().st_mtime_ns, p.name))


def read_contact_list(path: Path) -> list[str]:
    """The user ids of an exported contact list, in list order."""
    return pd.read_csv(path, usecols=[ENTITY], dtype=str)[ENTITY].tolist()


def reached_users(contact_list: Sequence[str], reach: float, seed: int, month: int) -> list[str]:
    """Who of the previous month's contact list the team reached: all of it at `reach` 1, else a
    seeded draw of about `reach` of it (list order kept)."""
    if not 0.0 <= reach <= 1.0:
        raise ValueError(f"reach must be within [0, 1], got {reach}")
    draws = np.random.default_rng([seed, 4, month]).random(len(contact_list))
    return [user for user, draw in zip(contact_list, draws, strict=True) if draw < reach]


def build_drop(
    spec: DropSpec, telco_csv: Path | None = None, reached: Sequence[str] | None = None
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """The raw tables of a month and its truth, as DataFrames (no I/O besides the Telco CSV).
    With `reached` (users the previous month's campaign reached), the tables include `contacts`
    and those users' churn probability is cut by `spec.treatment_effect`."""
    if not 0.0 <= spec.treatment_effect <= 1.0:
        raise ValueError(f"treatment_effect must be within [0, 1], got {spec.treatment_effect}")
    pop = _population(spec.users, spec.seed, telco_csv)
    beh, prob = _churn(pop, spec.month, spec.seed, spec.drift)
    if spec.labelled_month != spec.month:
        _, prob = _churn(pop, spec.labelled_month, spec.seed, spec.labelled_drift)
    if reached is not None:
        prob = np.where(np.isin(pop[ENTITY], np.asarray(reached, dtype=str)), prob * (1 - spec.treatment_effect), prob)
    label = (np.random.default_rng([spec.seed, 2, spec.labelled_month]).random(spec.users) < prob).astype(np.int64)
    columns = {**pop, **beh, LABEL: label}
    tables = {t.name: pd.DataFrame({c: columns[c] for c in t.column_names}) for t in RAW_TABLES}
    if reached is not None:
        tables[CONTACTS.name] = pd.DataFrame({ENTITY: pd.Series(list(reached), dtype=object)})
    truth = pd.DataFrame({ENTITY: pop[ENTITY], "churn_probability": np.round(prob, 6)})
    if spec.broken:
        break_batch(tables, spec.broken, np.random.default_rng([spec.seed, 3, spec.month]))
    return tables, truth


def break_batch(tables: dict[str, pd.DataFrame], kind: str, rng: np.random.Generator) -> None:
    """Damage a batch in place the way real feeds break (see BREAKAGES)."""
    if kind not in BREAKAGES:
        raise ValueError(f"unknown breakage {kind!r}; choose one of {sorted(BREAKAGES)}")
    n = len(tables["users"])
    some = rng.choice(n, size=max(1, n // 200), replace=False)
    if kind == "negative_fee":
        tables["subscriptions"].loc[some, "monthly_fee"] = -tables["subscriptions"].loc[some, "monthly_fee"]
    elif kind == "unknown_net_service":
        tables["subscriptions"].loc[some, "net_service"] = "Satellite"
    elif kind == "duplicate_users":
        tables["users"] = pd.concat([tables["users"], tables["users"].iloc[some]], ignore_index=True)
    elif kind == "missing_column":
        tables["usage_agg_30d"] = tables["usage_agg_30d"].drop(columns=["watch_hours_30d"])
    elif kind == "orphan_keys":
        orphans = tables["usage_agg_30d"].iloc[some].copy()
        orphans[ENTITY] = [f"{i:04d}-ZZZZZ" for i in range(len(orphans))]
        tables["usage_agg_30d"] = pd.concat([tables["usage_agg_30d"], orphans], ignore_index=True)
    elif kind == "bad_label":
        tables["labels"].loc[some, LABEL] = 2
    elif kind == "non_numeric":
        usage = tables["usage_agg_30d"].astype({"skips_7d": object})
        usage.loc[some, "skips_7d"] = "n/a"
        tables["usage_agg_30d"] = usage
    elif kind == "empty_labels":
        tables["labels"] = tables["labels"].iloc[0:0]


def write_drop(
    spec: DropSpec, out_dir: Path, telco_csv: Path | None = None, reached: Sequence[str] | None = None
) -> Path:
    """Write `out_dir/month_NNN/` and return its path; the same spec (and `reached`) always writes
    the same bytes."""
    tables, truth = build_drop(spec, telco_csv, reached)
    folder = out_dir / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.to_csv(folder / f"{name}.csv", index=False, lineterminator="\n")
    truth.to_csv(folder / "_truth.csv", index=False, lineterminator="\n")
    manifest = {
        "month": spec.name,
        "as_of": spec.as_of.isoformat(),
        "users": spec.users,
        "seed": spec.seed,
        "drift": asdict(spec.drift),
        "broken": spec.broken,
        "files": sorted(f"{name}.csv" for name in tables),
    }
    if spec.label_lag:
        manifest.update(label_lag=spec.label_lag, labels_as_of=spec.labels_as_of.isoformat())
    if reached is not None:
        manifest.update(treatment_effect=spec.treatment_effect, contacts=len(reached))
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("wrote %s (%d users, as_of %s)", folder, spec.users, spec.as_of)
    return folder


def default_drift(month: int) -> Drift:
    """month_001 is drifted by default; every other month follows the reference population."""
    return DEFAULT_DRIFT if month == 1 else NO_DRIFT
